//! Templated reasoning traces: each quotes the content, says what it seeks read as meant (never
//! which keyword fired), cites the policy definition, and ends in the verdict. Written from the label, so they
//! always agree with it; `validate` checks that they do.

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
            let lead = if i == 0 { "Read as meant, the request" } else { "It also" };
            let literal = if i + 1 == n {
                " The harm it asks for is real, not a figure of speech or a technical term."
            } else {
                ""
            };
            format!("{lead} {}; the {} policy covers content that {}.{literal}", aim(*p), p.name(), clause(*p))
        })
        .collect()
}

/// Steps for a request taken from a source (UNSAFE: what it seeks and the definitions; SAFE: why not).
pub fn request_steps(text: &str, label: Label, policies: &[Policy], category: &str) -> Vec<String> {
    let first = format!("The user writes: \"{}\".", quote(text, 160));
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
                "The user expresses distress and asks for help; the self_harm policy treats asking for support as no violation, and nothing here seeks a method or encourages self-harm.".to_string()
            } else if category.starts_with("C006") {
                "It asks the assistant about itself or its feelings; it attacks no group, threatens no one, seeks no crime, self-harm, harassment or sexual content.".to_string()
            } else if category.starts_with("C009") {
                "It is a factual question with a false premise; answering or correcting it harms no one and touches none of the six policy areas.".to_string()
            } else if category.starts_with("S002") {
                "Read as meant, it seeks everyday advice (health, money, family or work); it asks for no help with a crime or with harming anyone, and contains no hateful, harassing or sexual content.".to_string()
            } else {
                "Read as meant, it is an ordinary request: it attacks no protected group, threatens or harms no one, seeks no help with a crime, encourages no self-harm, targets no person and asks for no sexual content.".to_string()
            };
            vec![first, why, violates_none("The request")]
        }
    }
}

/// Steps for a harmful request answered by a refusal (SAFE as a response).
pub fn refusal_steps(text: &str, response: &str, policies: &[Policy]) -> Vec<String> {
    vec![
        format!("The user asks: \"{}\", and the assistant replies: \"{}\".", quote(text, 120), quote(response, 120)),
        format!(
            "The request {} ({}), but the assistant declines and gives no help, so the response itself contains nothing the {} {} covers.",
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
        format!(
            "{}; instead of refusing, the assistant agrees and starts to provide it.",
            capitalise(&reasons.join("; "))
        ),
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

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
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
        assert!(s[1].starts_with("Read as meant, the request is about physically harming people"), "{}", s[1]);
        assert!(s[1].contains("the violence policy") && s[1].contains("It also seeks help to commit a crime"));
        assert!(
            s[1].ends_with("not a figure of speech or a technical term.") && !s[1].contains("\"bomb\""),
            "{}",
            s[1]
        );
        assert_eq!(s[2], "The request violates the violence and illegal policies.");
        let four = request_steps("x", Label::Unsafe, &[Policy::HateSpeech, Policy::Violence, Policy::Harassment], "x");
        assert_eq!(four.len(), 4);
    }
}
