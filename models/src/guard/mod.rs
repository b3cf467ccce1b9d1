//! The guard protocol, written once for the trainer, the runtime and the page:
//! - [`Policy`]: the six policies and the definitions used in prompts;
//! - [`prompt`]: the messages sent to the model (all policies in one call, or one policy);
//! - [`format`]: the two output formats (R-SFT and dual-stream) rendered from a labelled example;
//! - [`parse`]: a streaming parser that turns generated text into reasoning-so-far and a [`Verdict`].

pub mod format;
pub mod parse;
pub mod prompt;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use parse::{parse, Parsed, Section, StreamParser, Unparseable, Update};
pub use prompt::GuardRequest;

/// The safety policies a guard judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    HateSpeech,
    Violence,
    Illegal,
    SelfHarm,
    Harassment,
    Sexual,
}

impl Policy {
    pub const ALL: [Policy; 6] =
        [Policy::HateSpeech, Policy::Violence, Policy::Illegal, Policy::SelfHarm, Policy::Harassment, Policy::Sexual];

    /// The identifier used in outputs and data (`hate_speech`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::HateSpeech => "hate_speech",
            Policy::Violence => "violence",
            Policy::Illegal => "illegal",
            Policy::SelfHarm => "self_harm",
            Policy::Harassment => "harassment",
            Policy::Sexual => "sexual",
        }
    }

    /// How the policy is named in a per-policy prompt ("illegal activity").
    pub fn title(self) -> &'static str {
        match self {
            Policy::HateSpeech => "hate speech",
            Policy::Violence => "violence",
            Policy::Illegal => "illegal activity",
            Policy::SelfHarm => "self-harm",
            Policy::Harassment => "harassment",
            Policy::Sexual => "sexual content",
        }
    }

    /// One-line definition used in prompts: what violates the policy, and what does not.
    pub fn definition(self) -> &'static str {
        match self {
            Policy::HateSpeech => "attacks, dehumanizes or calls for exclusion of people because of a protected attribute (race, ethnicity, religion, gender, sexual orientation, disability, nationality). Discussing or reporting on prejudice is not a violation.",
            Policy::Violence => "threatens, incites, glorifies or gives instructions for physically harming people or animals. Metaphors (\"annihilate the competition\"), fiction, history, news and self-defence information are not violations.",
            Policy::Illegal => "seeks or gives help to commit crimes: weapons or drug making and trafficking, fraud, theft, hacking into systems without permission, evading law enforcement. Security education, legal questions and technical jargon (\"kill a process\", \"execute a script\") are not violations.",
            Policy::SelfHarm => "encourages or gives methods for suicide, self-injury or eating disorders. Asking for support, expressing distress, or recovery and prevention information are not violations.",
            Policy::Harassment => "bullies, threatens, intimidates, demeans or targets a specific person or group, including manipulation, stalking and doxxing. Criticism of ideas and ordinary disagreement are not violations.",
            Policy::Sexual => "sexually explicit content, sexual solicitation, or any sexual content involving minors. Sex education, health questions and romance without explicit detail are not violations.",
        }
    }

    /// Lenient lookup: `hate_speech`, `Hate Speech`, `hate-speech`, `self harm`, `illegal activity`…
    pub fn from_name(s: &str) -> Option<Policy> {
        let norm: String = s
            .trim()
            .trim_matches(|c: char| !c.is_alphanumeric())
            .chars()
            .map(|c| if c.is_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        let norm = norm.split('_').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("_");
        Some(match norm.as_str() {
            "hate_speech" | "hate" | "hateful" | "hate_speeches" => Policy::HateSpeech,
            "violence" | "violent" | "violent_content" => Policy::Violence,
            "illegal" | "illegal_activity" | "illegal_activities" | "crime" | "criminal" => Policy::Illegal,
            "self_harm" | "selfharm" | "suicide" | "self_injury" => Policy::SelfHarm,
            "harassment" | "harrassment" | "bullying" => Policy::Harassment,
            "sexual" | "sexual_content" | "sex" => Policy::Sexual,
            _ => return None,
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Safe,
    Unsafe,
}

impl Label {
    /// `SAFE` / `UNSAFE`, as written in outputs.
    pub fn upper(self) -> &'static str {
        match self {
            Label::Safe => "SAFE",
            Label::Unsafe => "UNSAFE",
        }
    }
    pub fn lower(self) -> &'static str {
        match self {
            Label::Safe => "safe",
            Label::Unsafe => "unsafe",
        }
    }
}

/// How the model writes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// `Reasoning:\nStep 1: …\n\nClassification: UNSAFE\nViolated policies: …`
    #[default]
    Rsft,
    /// `<think>…</think>\n<proof>…</proof>\n<answer>…</answer>`; the verdict lives in the answer.
    DualStream,
}

impl OutputFormat {
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Rsft => "rsft",
            OutputFormat::DualStream => "dual-stream",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "rsft" | "r-sft" => Some(OutputFormat::Rsft),
            "dual" | "dual-stream" | "dualstream" => Some(OutputFormat::DualStream),
            _ => None,
        }
    }
}

/// Which question the guard answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mode {
    /// One generation judges all six policies and lists the violated ones (the default).
    #[default]
    AllPolicies,
    /// SAFE/UNSAFE for one policy ("Analyze this content for illegal activity policy violations").
    PerPolicy(Policy),
}

/// The guard's decision about one piece of content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub label: Label,
    /// Violated policies (empty when SAFE), in canonical order, without duplicates.
    pub policies: Vec<Policy>,
    /// The reasoning the model gave before its verdict.
    pub reasoning: String,
    pub format: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_are_lenient() {
        for (s, p) in [
            ("hate_speech", Policy::HateSpeech),
            ("Hate Speech", Policy::HateSpeech),
            ("hate-speech.", Policy::HateSpeech),
            ("Self-Harm", Policy::SelfHarm),
            ("self harm", Policy::SelfHarm),
            ("Illegal activity", Policy::Illegal),
            ("**violence**", Policy::Violence),
            ("SEXUAL", Policy::Sexual),
            ("sexual content", Policy::Sexual),
        ] {
            assert_eq!(Policy::from_name(s), Some(p), "{s}");
        }
        assert_eq!(Policy::from_name("none"), None);
        assert_eq!(Policy::from_name("spam"), None);
        for p in Policy::ALL {
            assert_eq!(Policy::from_name(p.name()), Some(p));
            assert_eq!(Policy::from_name(p.title()), Some(p));
        }
    }
}
