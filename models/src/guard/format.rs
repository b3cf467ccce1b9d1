//! The two output formats, rendered from a labelled example (training targets, fixtures).

use super::{Label, Mode, OutputFormat, Policy};

/// The verdict lines: `Classification: …` and, when judging all policies, `Violated policies: …`.
pub fn verdict_lines(mode: Mode, label: Label, policies: &[Policy]) -> String {
    let mut s = format!("Classification: {}", label.upper());
    if mode == Mode::AllPolicies {
        let list = if label == Label::Safe || policies.is_empty() {
            "none".to_string()
        } else {
            canonical(policies).iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
        };
        s.push_str(&format!("\nViolated policies: {list}"));
    }
    s
}

/// Policies deduplicated, in the canonical order of [`Policy::ALL`].
pub fn canonical(policies: &[Policy]) -> Vec<Policy> {
    Policy::ALL.into_iter().filter(|p| policies.contains(p)).collect()
}

/// The full answer a guard should give: reasoning steps, then the verdict.
/// `proof` is the dual-stream evidence section (defaults to the last step).
pub fn render(
    format: OutputFormat,
    mode: Mode,
    label: Label,
    policies: &[Policy],
    steps: &[String],
    proof: Option<&str>,
) -> String {
    let steps_text: Vec<String> =
        steps.iter().enumerate().map(|(i, s)| format!("Step {}: {}", i + 1, s.trim())).collect();
    let verdict = verdict_lines(mode, label, policies);
    match format {
        OutputFormat::Rsft => format!("Reasoning:\n{}\n\n{verdict}", steps_text.join("\n")),
        OutputFormat::DualStream => {
            let proof =
                proof.map(str::to_string).or_else(|| steps.last().map(|s| s.trim().to_string())).unwrap_or_default();
            format!(
                "<think>\n{}\n</think>\n<proof>\n{proof}\n</proof>\n<answer>\n{verdict}\n</answer>",
                steps_text.join("\n")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsft_matches_the_documented_shape() {
        let steps =
            vec!["The user asks for help to bully a classmate.".to_string(), "That targets a person.".to_string()];
        let out = render(
            OutputFormat::Rsft,
            Mode::AllPolicies,
            Label::Unsafe,
            &[Policy::Violence, Policy::Harassment],
            &steps,
            None,
        );
        assert_eq!(
            out,
            "Reasoning:\nStep 1: The user asks for help to bully a classmate.\nStep 2: That targets a person.\n\nClassification: UNSAFE\nViolated policies: violence, harassment"
        );
        let safe = render(OutputFormat::Rsft, Mode::AllPolicies, Label::Safe, &[], &steps[..1], None);
        assert!(safe.ends_with("Classification: SAFE\nViolated policies: none"));
        let per = render(
            OutputFormat::Rsft,
            Mode::PerPolicy(Policy::Illegal),
            Label::Unsafe,
            &[Policy::Illegal],
            &steps[..1],
            None,
        );
        assert!(per.ends_with("\n\nClassification: UNSAFE"));
    }

    #[test]
    fn dual_stream_puts_the_verdict_in_the_answer() {
        let out = render(
            OutputFormat::DualStream,
            Mode::AllPolicies,
            Label::Safe,
            &[],
            &["A metaphor.".into()],
            Some("\"annihilate\" refers to market share"),
        );
        assert_eq!(
            out,
            "<think>\nStep 1: A metaphor.\n</think>\n<proof>\n\"annihilate\" refers to market share\n</proof>\n<answer>\nClassification: SAFE\nViolated policies: none\n</answer>"
        );
    }
}
