//! `vigil tokens PROMPT [-n N] [--guard] [--dense] [--json]`: greedy token ids after one user message. The browser
//! and Node tests compare their runtimes' tokens with this native reference.

use anyhow::Result;
use serde_json::json;

use crate::cli::{Global, TokensArgs};

pub fn run(args: TokensArgs, _g: &Global) -> Result<()> {
    let mut guard = if args.dense {
        let path = crate::commands::resolve_model(&args.model.model)?;
        let g = vigil_models::gguf::Gguf::open(&path)?;
        let mode = vigil_models::cpu::WeightMode::Dense(candle_core::DType::F32);
        let cpu = vigil_runtime::backend::cpu::CpuBackend::load_mode(&g, args.model.context, mode)?;
        vigil_runtime::Guard::new(&g, Box::new(cpu))?
    } else {
        crate::commands::load_guard(&args.model)?
    };
    let prompt = if args.guard {
        guard.prompt_ids(&vigil_models::guard::GuardRequest::new(args.prompt.as_str()))?
    } else {
        guard.chat_ids(&args.prompt)?
    };
    let ids = guard.greedy(&prompt, args.count)?;
    if args.json {
        let text = guard.tokenizer().decode(&ids);
        println!("{}", json!({"prompt": args.prompt, "ids": ids, "text": text, "backend": guard.backend_name()}));
    } else {
        println!("{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}
