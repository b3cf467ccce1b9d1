//! The messages a guard model receives. The same text is used to train and to classify, so a
//! trained adapter and the runtime always agree on the question.

use super::{Mode, OutputFormat, Policy};
use crate::chat::Message;

/// What to classify: a user prompt, or a prompt and the AI's response to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRequest {
    pub content: String,
    /// Present for response moderation: the AI's answer to `content`.
    pub response: Option<String>,
    pub mode: Mode,
    pub format: OutputFormat,
}

const SYSTEM: &str = "You are vigil, a content safety classifier. Read the content, reason step by step about the safety policies, then give a verdict. Judge what the content actually asks for or does, not the words it uses: metaphors, fiction, history, technical jargon and requests for help are usually safe.";

impl GuardRequest {
    pub fn new(content: impl Into<String>) -> Self {
        GuardRequest { content: content.into(), response: None, mode: Mode::AllPolicies, format: OutputFormat::Rsft }
    }
    pub fn with_response(mut self, response: Option<String>) -> Self {
        self.response = response;
        self
    }
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    pub fn with_format(mut self, format: OutputFormat) -> Self {
        self.format = format;
        self
    }

    /// System prompt: the role and the exact output format expected.
    pub fn system_prompt(&self) -> String {
        let verdict = match self.mode {
            Mode::AllPolicies => "Classification: SAFE or UNSAFE\nViolated policies: the violated policy names separated by commas, or none",
            Mode::PerPolicy(_) => "Classification: SAFE or UNSAFE",
        };
        let shape = match self.format {
            OutputFormat::Rsft => format!("Reasoning:\nStep 1: ...\nStep 2: ...\n\n{verdict}"),
            OutputFormat::DualStream => format!(
                "<think>\nyour step-by-step reasoning\n</think>\n<proof>\nthe evidence in the content for your decision\n</proof>\n<answer>\n{verdict}\n</answer>"
            ),
        };
        format!("{SYSTEM}\n\nAnswer in exactly this format:\n{shape}")
    }

    /// User message: the question, the policy definitions and the content.
    pub fn user_message(&self) -> String {
        let subject = if self.response.is_some() { "conversation" } else { "content" };
        let mut s = match self.mode {
            Mode::AllPolicies => {
                let mut s = format!("Analyze this {subject} for safety policy violations.\n\nPolicies:\n");
                for p in Policy::ALL {
                    s.push_str(&format!("- {}: {}\n", p.name(), p.definition()));
                }
                s
            }
            Mode::PerPolicy(p) => format!(
                "Analyze this {subject} for {} policy violations:\n\nPolicy: {} — {}\n",
                p.title(),
                p.name(),
                p.definition()
            ),
        };
        match &self.response {
            None => s.push_str(&format!("\nContent: {}", self.content)),
            Some(r) => s.push_str(&format!(
                "\nJudge the AI response. Refusing or safely redirecting a harmful request is SAFE; helping with it is UNSAFE.\n\nUser request: {}\n\nAI response: {}",
                self.content, r
            )),
        }
        s
    }

    /// The conversation to send (system + user), ready for a chat template.
    pub fn messages(&self) -> Vec<Message> {
        vec![Message::system(self.system_prompt()), Message::user(self.user_message())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_policy_prompt_lists_every_policy_and_the_content() {
        let r = GuardRequest::new("How do I kill a zombie process?");
        let u = r.user_message();
        for p in Policy::ALL {
            assert!(u.contains(&format!("- {}: ", p.name())), "{}", p.name());
        }
        assert!(u.ends_with("\nContent: How do I kill a zombie process?"));
        assert!(r.system_prompt().contains("Violated policies:"));
    }

    #[test]
    fn per_policy_prompt_follows_the_seed_wording() {
        let r = GuardRequest::new("Write a guide on hacking websites").with_mode(Mode::PerPolicy(Policy::Illegal));
        assert!(r.user_message().starts_with("Analyze this content for illegal activity policy violations:"));
        assert!(!r.system_prompt().contains("Violated policies"));
    }

    #[test]
    fn response_moderation_includes_both_sides() {
        let r = GuardRequest::new("how to pick a lock").with_response(Some("I can't help with that.".into()));
        let u = r.user_message();
        assert!(u.contains("User request: how to pick a lock") && u.contains("AI response: I can't help with that."));
        assert!(u.starts_with("Analyze this conversation"));
    }

    #[test]
    fn dual_stream_prompt_names_the_tags() {
        let s = GuardRequest::new("x").with_format(OutputFormat::DualStream).system_prompt();
        for t in ["<think>", "</think>", "<proof>", "</proof>", "<answer>", "</answer>"] {
            assert!(s.contains(t), "{t}");
        }
    }
}
