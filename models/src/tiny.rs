//! Tiny random models as GGUF bytes, for tests here, natively and in the browser (wasm): built with
//! vigil's own GGUF writer, so every test can make one without a download.

/// A tiny random llama-architecture model as GGUF bytes, built with vigil's own writer: 2 layers,
/// d 64, ffn 128, 4 heads / 2 KV heads, a byte-level GPT-2 vocabulary (256 bytes + ChatML control
/// tokens, no merges) and the ChatML template. Matrices are stored as `ty` (F32, Q8_0, Q4_1…).
pub fn tiny_llama(ty: crate::gguf::GgmlType, seed: u64) -> Vec<u8> {
    tiny_model(crate::arch::Arch::Llama, ty, seed)
}

/// [`tiny_llama`]'s Gemma 3 sibling: 6 layers (five within a sliding window of 8 tokens, RoPE base
/// 10⁴, then one global, base 10⁶), 4 heads over 1 KV head of dim 32 (q is wider than d),
/// per-head q/k norms, post-attention and post-feed-forward norms, GeGLU, embeddings scaled by √d.
pub fn tiny_gemma3(ty: crate::gguf::GgmlType, seed: u64) -> Vec<u8> {
    tiny_model(crate::arch::Arch::Gemma3, ty, seed)
}

fn tiny_model(arch: crate::arch::Arch, ty: crate::gguf::GgmlType, seed: u64) -> Vec<u8> {
    use crate::arch::Arch;
    use crate::gguf::{GgmlType, GgufWriter, Value};
    use rand::SeedableRng;
    let gemma = arch == Arch::Gemma3;
    let (n_layer, d, ff, heads, kv, hd) =
        if gemma { (6usize, 64usize, 128usize, 4usize, 1usize, 32usize) } else { (2, 64, 128, 4, 2, 16) };
    // byte-level alphabet (GPT-2's printable mapping of the 256 bytes)
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    let mut tokens: Vec<String> = (0u32..256)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect();
    let mut types = vec![1i32; 256];
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
        types.push(3);
    }
    let vocab = tokens.len(); // 259
    let mut w = GgufWriter::new();
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    w.set("general.architecture", Value::string(a));
    w.set("general.type", Value::string("model"));
    w.set("general.name", Value::string(format!("vigil tiny {a}")));
    w.set(key("block_count"), Value::U32(n_layer as u32));
    w.set(key("context_length"), Value::U32(4096));
    w.set(key("embedding_length"), Value::U32(d as u32));
    w.set(key("feed_forward_length"), Value::U32(ff as u32));
    w.set(key("attention.head_count"), Value::U32(heads as u32));
    w.set(key("attention.head_count_kv"), Value::U32(kv as u32));
    w.set(key("rope.freq_base"), Value::F32(if gemma { 1e6 } else { 10_000.0 }));
    w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(if gemma { 1e-6 } else { 1e-5 }));
    w.set(key("vocab_size"), Value::U32(vocab as u32));
    w.set(key("rope.dimension_count"), Value::U32(hd as u32));
    if gemma {
        w.set(key("attention.key_length"), Value::U32(hd as u32));
        w.set(key("attention.value_length"), Value::U32(hd as u32));
        w.set(key("attention.sliding_window"), Value::U32(8));
    }
    w.set("tokenizer.ggml.model", Value::string("gpt2"));
    w.set("tokenizer.ggml.pre", Value::string("gpt-2"));
    w.set("tokenizer.ggml.tokens", Value::str_array(tokens));
    w.set("tokenizer.ggml.token_type", Value::i32_array(types));
    w.set("tokenizer.ggml.merges", Value::str_array(Vec::<String>::new()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(256));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(258));
    w.set(
        "tokenizer.chat_template",
        Value::string("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = |n: usize, std: f32| crate::lora::gaussian(&mut rng, n, std);
    let mat = |w: &mut GgufWriter, name: &str, n_in: usize, n_out: usize, v: Vec<f32>| {
        w.add_f32(name, &[n_in as u64, n_out as u64], ty, &v).unwrap();
    };
    let e = normal(vocab * d, 0.5);
    w.add_f32("token_embd.weight", &[d as u64, vocab as u64], GgmlType::Q8_0, &e).unwrap();
    let ones = |w: &mut GgufWriter, name: &str, v: Vec<f32>| {
        let v: Vec<f32> = v.iter().map(|x| 1.0 + x).collect();
        w.add_f32(name, &[v.len() as u64], GgmlType::F32, &v).unwrap();
    };
    ones(&mut w, "output_norm.weight", normal(d, 0.1));
    let qd = heads * hd;
    for i in 0..n_layer {
        let p = format!("blk.{i}.");
        ones(&mut w, &format!("{p}attn_norm.weight"), normal(d, 0.1));
        ones(&mut w, &format!("{p}ffn_norm.weight"), normal(d, 0.1));
        if gemma {
            ones(&mut w, &format!("{p}attn_q_norm.weight"), normal(hd, 0.1));
            ones(&mut w, &format!("{p}attn_k_norm.weight"), normal(hd, 0.1));
            ones(&mut w, &format!("{p}post_attention_norm.weight"), normal(d, 0.1));
            ones(&mut w, &format!("{p}post_ffw_norm.weight"), normal(d, 0.1));
        }
        let s = 1.0 / (d as f32).sqrt();
        mat(&mut w, &format!("{p}attn_q.weight"), d, qd, normal(d * qd, s));
        mat(&mut w, &format!("{p}attn_k.weight"), d, kv * hd, normal(d * kv * hd, s));
        mat(&mut w, &format!("{p}attn_v.weight"), d, kv * hd, normal(d * kv * hd, s));
        mat(&mut w, &format!("{p}attn_output.weight"), qd, d, normal(qd * d, 1.0 / (qd as f32).sqrt()));
        mat(&mut w, &format!("{p}ffn_gate.weight"), d, ff, normal(d * ff, s));
        mat(&mut w, &format!("{p}ffn_up.weight"), d, ff, normal(d * ff, s));
        mat(&mut w, &format!("{p}ffn_down.weight"), ff, d, normal(ff * d, 1.0 / (ff as f32).sqrt()));
    }
    w.to_bytes()
}
