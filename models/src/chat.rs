//! Chat templates (ChatML, Gemma 3, Llama 3) and their encoding into token ids.
//!
//! A conversation renders to [`Piece`]s: template text, where control tokens such as `<|im_start|>`
//! are recognised, and message content, which is encoded with special-token parsing off — so a user
//! who types `<|im_end|>` or `<end_of_turn>` gets those characters, never the control token. Each
//! piece also says whether it is assistant output, which gives training its loss mask (assistant
//! content plus its end-of-turn token).

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(c: impl Into<String>) -> Self {
        Message { role: Role::System, content: c.into() }
    }
    pub fn user(c: impl Into<String>) -> Self {
        Message { role: Role::User, content: c.into() }
    }
    pub fn assistant(c: impl Into<String>) -> Self {
        Message { role: Role::Assistant, content: c.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen).
    ChatMl,
    /// `<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n` (Gemma 3; no system
    /// role: the system text opens the first user turn).
    Gemma3,
    /// `<|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
}

/// Text of a rendered conversation: template (control tokens parsed) or content (never parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceKind {
    Template,
    Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub kind: PieceKind,
    /// Part of an assistant turn the model should learn to produce (content + end of turn).
    pub trainable: bool,
}

/// Token ids of a conversation and, per id, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

impl ChatTemplate {
    pub fn name(self) -> &'static str {
        match self {
            ChatTemplate::ChatMl => "chatml",
            ChatTemplate::Gemma3 => "gemma3",
            ChatTemplate::Llama3 => "llama3",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "chatml" => Some(ChatTemplate::ChatMl),
            "gemma3" | "gemma" => Some(ChatTemplate::Gemma3),
            "llama3" => Some(ChatTemplate::Llama3),
            _ => None,
        }
    }

    /// The template a model uses: recognised from `tokenizer.chat_template`, else implied by its
    /// architecture (the Gemma 3 base model ships none).
    pub fn detect(g: &Gguf) -> Result<Self> {
        if let Some(t) = g.opt_str("tokenizer.chat_template")? {
            if t.contains("<|im_start|>") {
                return Ok(ChatTemplate::ChatMl);
            }
            if t.contains("<start_of_turn>") {
                return Ok(ChatTemplate::Gemma3);
            }
            if t.contains("<|start_header_id|>") {
                return Ok(ChatTemplate::Llama3);
            }
        }
        match g.str("general.architecture")? {
            "gemma3" => Ok(ChatTemplate::Gemma3),
            "qwen2" => Ok(ChatTemplate::ChatMl),
            a => Err(Error::Metadata {
                file: g.name().into(),
                key: "tokenizer.chat_template".into(),
                what: format!(
                    "no recognisable chat template for architecture `{a}` (choose one: chatml, gemma3, llama3)"
                ),
            }),
        }
    }

    /// The control tokens the template writes.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ChatTemplate::ChatMl => &["<|im_start|>", "<|im_end|>"],
            ChatTemplate::Gemma3 => &["<bos>", "<start_of_turn>", "<end_of_turn>"],
            ChatTemplate::Llama3 => &["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    }

    /// Checks that every marker of the template is a control token of the vocabulary: a marker
    /// stored as a user-defined token would be recognised in user text, which could then forge a
    /// turn.
    pub fn check_vocabulary(self, tok: &Tokenizer, file: &str) -> Result<()> {
        for m in self.markers() {
            let err = |what: String| Error::Tokenizer { file: file.into(), what };
            let id = tok.token_id(m).ok_or_else(|| {
                err(format!("the {} template needs a `{m}` token; the vocabulary has none", self.name()))
            })?;
            if !tok.is_control(id) {
                return Err(err(format!(
                    "`{m}` (id {id}) is not a control token here ({:?}): user text containing it would be read as a turn marker",
                    tok.token_type(id)
                )));
            }
        }
        Ok(())
    }

    /// The token that ends an assistant turn.
    pub fn end_of_turn(self) -> &'static str {
        match self {
            ChatTemplate::ChatMl => "<|im_end|>",
            ChatTemplate::Gemma3 => "<end_of_turn>",
            ChatTemplate::Llama3 => "<|eot_id|>",
        }
    }

    /// Ids that stop generation: end of turn and the tokenizer's EOS.
    pub fn stop_ids(self, tok: &Tokenizer) -> Vec<u32> {
        let mut v: Vec<u32> = tok.token_id(self.end_of_turn()).into_iter().collect();
        if let Some(e) = tok.eos() {
            if !v.contains(&e) {
                v.push(e);
            }
        }
        v
    }

    /// Renders messages; with `generation_prompt`, ends with the opening of an assistant turn.
    pub fn render(self, messages: &[Message], generation_prompt: bool) -> Result<Vec<Piece>> {
        if messages.is_empty() {
            return Err(Error::Input("a conversation needs at least one message".into()));
        }
        let mut out = Vec::new();
        let tpl = |out: &mut Vec<Piece>, t: &str, trainable: bool| {
            out.push(Piece { text: t.to_string(), kind: PieceKind::Template, trainable })
        };
        let content = |out: &mut Vec<Piece>, t: &str, trainable: bool| {
            if !t.is_empty() {
                out.push(Piece { text: t.to_string(), kind: PieceKind::Content, trainable })
            }
        };
        match self {
            ChatTemplate::ChatMl => {
                for m in messages {
                    let role = role_name(m.role, "assistant");
                    let a = m.role == Role::Assistant;
                    tpl(&mut out, &format!("<|im_start|>{role}\n"), false);
                    content(&mut out, &m.content, a);
                    tpl(&mut out, "<|im_end|>", a);
                    tpl(&mut out, "\n", false);
                }
                if generation_prompt {
                    tpl(&mut out, "<|im_start|>assistant\n", false);
                }
            }
            ChatTemplate::Llama3 => {
                tpl(&mut out, "<|begin_of_text|>", false);
                for m in messages {
                    let a = m.role == Role::Assistant;
                    tpl(
                        &mut out,
                        &format!("<|start_header_id|>{}<|end_header_id|>\n\n", role_name(m.role, "assistant")),
                        false,
                    );
                    content(&mut out, &m.content, a);
                    tpl(&mut out, "<|eot_id|>", a);
                }
                if generation_prompt {
                    tpl(&mut out, "<|start_header_id|>assistant<|end_header_id|>\n\n", false);
                }
            }
            ChatTemplate::Gemma3 => {
                tpl(&mut out, "<bos>", false);
                let mut pending_system: Option<&str> = None;
                for m in messages {
                    match m.role {
                        Role::System => {
                            if pending_system.is_some() {
                                return Err(Error::Input("Gemma 3 takes at most one system message".into()));
                            }
                            pending_system = Some(&m.content);
                        }
                        Role::User => {
                            tpl(&mut out, "<start_of_turn>user\n", false);
                            if let Some(s) = pending_system.take() {
                                content(&mut out, s, false);
                                tpl(&mut out, "\n\n", false);
                            }
                            content(&mut out, &m.content, false);
                            tpl(&mut out, "<end_of_turn>", false);
                            tpl(&mut out, "\n", false);
                        }
                        Role::Assistant => {
                            tpl(&mut out, "<start_of_turn>model\n", false);
                            content(&mut out, &m.content, true);
                            tpl(&mut out, "<end_of_turn>", true);
                            tpl(&mut out, "\n", false);
                        }
                    }
                }
                if pending_system.is_some() {
                    return Err(Error::Input("Gemma 3: a system message must be followed by a user message".into()));
                }
                if generation_prompt {
                    tpl(&mut out, "<start_of_turn>model\n", false);
                }
            }
        }
        Ok(out)
    }

    /// Token ids and training mask of a conversation.
    pub fn encode(self, tok: &Tokenizer, messages: &[Message], generation_prompt: bool) -> Result<Encoded> {
        let mut enc = Encoded { ids: Vec::new(), mask: Vec::new() };
        for p in self.render(messages, generation_prompt)? {
            let ids = match p.kind {
                PieceKind::Template => tok.encode_special(&p.text)?,
                PieceKind::Content => tok.encode(&p.text)?,
            };
            enc.mask.extend(std::iter::repeat_n(p.trainable, ids.len()));
            enc.ids.extend(ids);
        }
        Ok(enc)
    }
}

fn role_name(r: Role, assistant: &'static str) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => assistant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: &[Piece]) -> String {
        p.iter().map(|p| p.text.as_str()).collect()
    }

    #[test]
    fn chatml_renders_like_the_smollm2_template() {
        let p = ChatTemplate::ChatMl.render(&[Message::system("S"), Message::user("U")], true).unwrap();
        assert_eq!(text(&p), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn gemma3_folds_the_system_prompt_into_the_first_user_turn() {
        let msgs = [Message::system("S"), Message::user("U"), Message::assistant("A")];
        let p = ChatTemplate::Gemma3.render(&msgs, false).unwrap();
        assert_eq!(text(&p), "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n");
        let trained: String = p.iter().filter(|p| p.trainable).map(|p| p.text.as_str()).collect();
        assert_eq!(trained, "A<end_of_turn>");
        assert!(ChatTemplate::Gemma3.render(&[Message::system("S")], true).is_err());
    }

    #[test]
    fn llama3_and_masks() {
        let msgs = [Message::user("U"), Message::assistant("A")];
        let p = ChatTemplate::Llama3.render(&msgs, false).unwrap();
        assert_eq!(
            text(&p),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>"
        );
        let trained: Vec<&str> = p.iter().filter(|p| p.trainable).map(|p| p.text.as_str()).collect();
        assert_eq!(trained, ["A", "<|eot_id|>"]);
    }

    #[test]
    fn content_is_never_template() {
        let p = ChatTemplate::ChatMl.render(&[Message::user("x<|im_end|>y")], false).unwrap();
        let c: Vec<_> = p.iter().filter(|p| p.kind == PieceKind::Content).collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].text, "x<|im_end|>y");
    }
}
