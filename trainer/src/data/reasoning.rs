//! Templated reasoning traces: each quotes the content, says what it seeks read as meant (never
//! which keyword fired), cites the policy definition, and ends in the verdict. Written from the label, so they
//! always agree with it; `validate` checks that they do.
//!
//! Every request without a response opens the same way, whatever its source: the quote, then
//! "Read as meant, the user …". When imported requests opened with the quote and authored ones
//! with a paraphrase, the opening told the source apart, and the source the label (79 % vs 33 %
//! UNSAFE): a model trained on it chose the verdict with its first words.

use vigil_models::guard::{Label, Policy};

/// The first `max` characters of `s` at a word boundary, with an ellipsis when cut.
pub fn quote(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(a, _)| a).trim_end_matches([',', ';', ':', '.']);
    format!("{cut}…")
}

/// The definition's first sentence: what violates the policy.
pub fn clause(p: Policy) -> &'static str {
    let d = p.definition();
    d.split_once(". ").map_or(d, |(a, _)| a)
}

/// What content violating `p` does, as a verb phrase.
pub fn aim(p: Policy) -> &'static str {
    match p {
        Policy::HateSpeech => "attacks or demeans people for a protected attribute",
        Policy::Violence => "is about physically harming people",
        Policy::Illegal => "seeks help to commit a crime",
        Policy::SelfHarm => "seeks or encourages self-harm",
        Policy::Harassment => "targets, demeans or intimidates a person",
        Policy::Sexual => "asks for sexual content",
    }
}

/// What a request violating `p` wants, as the object of "the user wants".
fn want(p: Policy) -> &'static str {
    match p {
        Policy::HateSpeech => "content that attacks or demeans people for a protected attribute",
        Policy::Violence => "content about physically harming people",
        Policy::Illegal => "help to commit a crime",
        Policy::SelfHarm => "help with or encouragement of self-harm",
        Policy::Harassment => "content that targets, demeans or intimidates a person",
        Policy::Sexual => "sexual content",
    }
}

/// The opening step of every request without a response.
fn quote_step(text: &str) -> String {
    format!("The user writes: \"{}\".", quote(text, 160))
}

/// `hate_speech`, `violence and illegal`, `a, b and c`.
pub fn list(ps: &[Policy]) -> String {
    let names: Vec<&str> = ps.iter().map(|p| p.name()).collect();
    match names.as_slice() {
        [] => String::new(),
        [a] => a.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn policy_word(ps: &[Policy]) -> &'static str {
    if ps.len() == 1 {
        "policy"
    } else {
        "policies"
    }
}

/// The closing step of an UNSAFE verdict.
pub fn violates(ps: &[Policy], what: &str) -> String {
    format!("{what} violates the {} {}.", list(ps), policy_word(ps))
}

/// The closing step of a SAFE verdict.
pub fn violates_none(what: &str) -> String {
    format!("{what} violates none of the six policies.")
}

/// Why a harmful request violates each policy: what it does, read as meant, and the definition.
/// No keyword is quoted: a trace that names the word which fired teaches a model to flag words
/// ("kill" in "kill a zombie process"), which is what reasoning first is meant to prevent.
fn because(policies: &[Policy]) -> Vec<String> {
    let n = policies.len();
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let lead = if i == 0 { "Read as meant, the user wants" } else { "It also wants" };
            let literal = if i + 1 == n {
                " The harm it asks for is real, not a figure of speech or a technical term."
            } else {
                ""
            };
            format!("{lead} {}; the {} policy covers content that {}.{literal}", want(*p), p.name(), clause(*p))
        })
        .collect()
}

/// Steps for a request taken from a source (UNSAFE: what it seeks and the definitions; SAFE: why not).
pub fn request_steps(text: &str, label: Label, policies: &[Policy], category: &str) -> Vec<String> {
    let first = quote_step(text);
    match label {
        Label::Unsafe => {
            let mut reasons = because(policies);
            // at most two reasons per step, so the trace stays within four steps
            let mut steps = vec![first];
            if reasons.len() > 2 {
                let tail = reasons.split_off(2);
                steps.push(reasons.join(" "));
                steps.push(tail.join(" "));
            } else {
                steps.push(reasons.join(" "));
            }
            steps.push(violates(policies, "The request"));
            steps
        }
        Label::Safe => {
            let why = if category.contains("support seeking") {
                "Read as meant, the user wants support: the user expresses distress and asks for help; the self_harm policy treats asking for support as no violation, and nothing here seeks a method or encourages self-harm."
            } else if category.starts_with("C006") {
                "Read as meant, the user wants to know about the assistant itself or its feelings; it attacks no group, threatens no one, seeks no crime, self-harm, harassment or sexual content."
            } else if category.starts_with("C009") {
                "Read as meant, the user wants an answer to a factual question with a false premise; answering or correcting it harms no one and touches none of the six policy areas."
            } else if category.starts_with("S002") {
                "Read as meant, the user wants everyday advice (health, money, family or work); it asks for no help with a crime or with harming anyone, and contains no hateful, harassing or sexual content."
            } else {
                "Read as meant, the user wants an ordinary answer: the request attacks no protected group, threatens or harms no one, seeks no help with a crime, encourages no self-harm, targets no person and asks for no sexual content."
            }
            .to_string();
            vec![first, why, violates_none("The request")]
        }
    }
}

/// Steps for an authored request: the common opening (the quote, then "Read as meant," and the
/// family's own paraphrase, "the user wants …"), then the family's reasoning and verdict; at most
/// four steps (a fourth family step shares the paraphrase's step).
pub fn authored_steps(text: &str, family_steps: Vec<String>) -> Vec<String> {
    let mut rest = family_steps.into_iter();
    let head = rest.next().unwrap_or_default();
    let head = match head.strip_prefix("The ") {
        Some(tail) => format!("Read as meant, the {tail}"),
        None => format!("Read as meant, {head}"),
    };
    let mut out = vec![quote_step(text), head];
    out.extend(rest);
    if out.len() > 4 {
        let reason = out.remove(2);
        out[1] = format!("{} {reason}", out[1]);
    }
    out
}

/// Steps for a harmful request answered by a refusal (SAFE as a response).
pub fn refusal_steps(text: &str, response: &str, policies: &[Policy]) -> Vec<String> {
    vec![
        format!("The user asks: \"{}\", and the assistant replies: \"{}\".", quote(text, 120), quote(response, 120)),
        // The reply is judged first, right after its quote: the word after "The assistant" decides.
        format!(
            "The assistant declines and gives no help; the request {} ({}), but the response itself contains nothing the {} {} covers.",
            aim(policies[0]),
            list(policies),
            list(policies),
            policy_word(policies)
        ),
        violates_none("As a response, this"),
    ]
}

/// Steps for a harmful request answered by agreement (UNSAFE as a response).
pub fn compliance_steps(text: &str, response: &str, policies: &[Policy]) -> Vec<String> {
    let reasons: Vec<String> =
        policies.iter().map(|p| format!("the request {}, which the {} policy covers", aim(*p), p.name())).collect();
    vec![
        format!("The user asks: \"{}\", and the assistant replies: \"{}\".", quote(text, 120), quote(response, 120)),
        format!("The assistant agrees and starts to provide it instead of refusing; {}.", reasons.join("; ")),
        violates(policies, "The response"),
    ]
}

/// Steps for a distress disclosure answered with support (SAFE).
pub fn support_steps(text: &str, response: &str) -> Vec<String> {
    vec![
        format!("The user writes: \"{}\", and the assistant replies: \"{}\".", quote(text, 120), quote(response, 120)),
        "The assistant offers support and encourages reaching out, giving no method; the self_harm policy treats support and prevention as no violation.".to_string(),
        violates_none("As a response, this"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_cut_at_words() {
        assert_eq!(quote("a  short text", 40), "a short text");
        assert_eq!(quote("one two three four", 9), "one two…");
    }

    #[test]
    fn unsafe_steps_cite_every_policy_and_quote_no_keyword() {
        let s = request_steps("How to smuggle a bomb", Label::Unsafe, &[Policy::Violence, Policy::Illegal], "x");
        assert_eq!(s.len(), 3);
        assert!(s[0].contains("How to smuggle a bomb"));
        assert!(s[1].starts_with("Read as meant, the user wants content about physically harming people"), "{}", s[1]);
        assert!(s[1].contains("the violence policy") && s[1].contains("It also wants help to commit a crime"));
        assert!(
            s[1].ends_with("not a figure of speech or a technical term.") && !s[1].contains("\"bomb\""),
            "{}",
            s[1]
        );
        assert_eq!(s[2], "The request violates the violence and illegal policies.");
        let four = request_steps("x", Label::Unsafe, &[Policy::HateSpeech, Policy::Violence, Policy::Harassment], "x");
        assert_eq!(four.len(), 4);
    }

    /// Source and authored requests, SAFE or UNSAFE, open with the same words: the quote, then
    /// "Read as meant, the user"; nothing before that point tells the label.
    #[test]
    fn every_request_opens_alike_whatever_its_source_or_label() {
        let text = "How do I kill a zombie process?";
        let family = |first: &str| vec![first.to_string(), "Why.".to_string(), "Verdict.".to_string()];
        let all = [
            request_steps(text, Label::Unsafe, &[Policy::Illegal], "x"),
            request_steps(text, Label::Safe, &[], "x"),
            request_steps(text, Label::Safe, &[], "support seeking"),
            authored_steps(text, family("The user wants to stop a stuck program.")),
        ];
        for s in &all {
            assert_eq!(s[0], "The user writes: \"How do I kill a zombie process?\".");
            assert!(s[1].starts_with("Read as meant, the user "), "{}", s[1]);
            assert!((2..=4).contains(&s.len()));
        }
        assert_eq!(all[3][1], "Read as meant, the user wants to stop a stuck program.");
        assert_eq!(all[3][2..], ["Why.", "Verdict."]);
        let long = authored_steps(text, vec!["The user asks.".into(), "A.".into(), "B.".into(), "Verdict.".into()]);
        assert_eq!(
            long,
            [
                "The user writes: \"How do I kill a zombie process?\".",
                "Read as meant, the user asks. A.",
                "B.",
                "Verdict."
            ]
        );
    }
}
