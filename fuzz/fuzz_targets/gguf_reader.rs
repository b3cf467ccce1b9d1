//! Fuzz the GGUF reader: any byte string must give Ok or an error — never a panic, an overflow or
//! an out-of-memory abort. Seeds: `fuzz/seed.sh` writes small valid files and the real header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_models::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    let _ = Gguf::validate("fuzz.gguf", data);
    if let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) {
        // Everything the reader accepted must be safe to use.
        for t in g.tensors() {
            let _ = g.tensor_bytes(t);
            if t.n_elements() <= 1 << 16 {
                let _ = g.tensor_f32(&t.name);
            }
        }
        let _ = vigil_models::tokenizer::Tokenizer::from_gguf(&g);
    }
});
