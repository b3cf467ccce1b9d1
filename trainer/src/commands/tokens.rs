//! `vigil tokens PROMPT [-n N] [--guard] [--json]`: greedy token ids after one user message. The browser
//! and Node tests compare their runtimes' tokens with this native reference.

use anyhow::Result;
use serde_json::json;

use crate::cli::{Global, TokensArgs};

pub fn run(args: TokensArgs, _g: &Global) -> Result<()> {
    let mut guard = crate::commands::load_guard(&args.model)?;
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
