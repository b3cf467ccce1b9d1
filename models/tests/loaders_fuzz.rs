//! Every loader, not only the GGUF reader, turns bad files into errors: random byte mutations of a
//! tiny model, and structurally valid files whose metadata values were swapped for other types or
//! values, go through the tokenizer, the architecture config, the decoder (plus a forward pass) and
//! the adapter reader. Any of them may fail — with an error, never a panic.

use candle_core::Device;
use proptest::prelude::*;
use vigil_models::arch::ArchConfig;
use vigil_models::cpu::{Llama, Logits, WeightMode};
use vigil_models::gguf::{GgmlType, Gguf, GgufWriter, Value};
use vigil_models::lora::LoraAdapter;
use vigil_models::testing::tiny_llama;
use vigil_models::tokenizer::Tokenizer;

fn exercise(g: &Gguf) {
    let _ = Tokenizer::from_gguf(g).map(|t| t.encode("hello <|im_end|> wörld").map(|ids| t.decode(&ids)));
    let _ = ArchConfig::from_gguf(g);
    let _ = LoraAdapter::from_gguf(g);
    for mode in [WeightMode::Quantized, WeightMode::Dense(candle_core::DType::F32)] {
        if let Ok(m) = Llama::load(g, mode, &Device::Cpu) {
            let mut cache = m.new_cache(16);
            let _ = m.forward(&[1, 2, 3], Some(&mut cache), Logits::Last);
            let _ = m.forward(&[9999], Some(&mut cache), Logits::Last);
        }
    }
}

fn values() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        prop::sample::select(vec![0u64, 1, 2, 3, 31, 64, 65, 1 << 20, 1 << 40, u64::MAX]).prop_map(Value::U64),
        prop::sample::select(vec![0.0f32, -1.0, 1e-30, f32::NAN, f32::INFINITY, 1e9]).prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        "[a-z_ ]{0,12}".prop_map(Value::String),
        prop::collection::vec("[a-z]{0,3}", 0..4).prop_map(Value::str_array),
        prop::collection::vec(any::<i32>(), 0..4).prop_map(Value::i32_array),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_bytes_give_errors_not_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = tiny_llama(GgmlType::Q4_1, 1);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(g) = Gguf::from_bytes("mutated.gguf", bytes) {
            exercise(&g);
        }
    }

    #[test]
    fn swapped_metadata_values_give_errors_not_panics(which in any::<prop::sample::Index>(), value in values()) {
        let base = Gguf::from_bytes("tiny.gguf", tiny_llama(GgmlType::Q8_0, 1)).unwrap();
        let key = base.metadata()[which.index(base.metadata().len())].0.clone();
        let mut w = GgufWriter::new();
        for (k, v) in base.metadata() {
            w.set(k.clone(), if *k == key { value.clone() } else { v.clone() });
        }
        for t in base.tensors() {
            w.add_tensor(t.name.clone(), &t.dims, t.ty, base.tensor_bytes(t).to_vec()).unwrap();
        }
        if let Ok(g) = Gguf::from_bytes("edited.gguf", w.to_bytes()) {
            exercise(&g);
        }
    }
}
