//! Parsing guard output, as it streams and at the end.
//!
//! [`StreamParser`] takes generated text in arbitrary chunks and reports which section each new
//! piece of text belongs to (reasoning, or think / proof / answer for dual-stream), holding back
//! only the few characters that might still turn out to be a marker (`Classification:`, `<think>`).
//! [`parse`] turns the whole text into a [`Verdict`]. It tolerates small drift — case, spacing,
//! markdown emphasis, `Unsafe`, `hate speech` for `hate_speech` — and otherwise says precisely why
//! the text is [`Unparseable`].

use serde::{Deserialize, Serialize};

use super::format::canonical;
use super::{Label, Mode, OutputFormat, Policy, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// R-SFT reasoning (before the verdict).
    Reasoning,
    Think,
    Proof,
    Answer,
    /// The verdict lines (R-SFT) or text outside every section.
    Verdict,
    /// Text before the first tag or after the answer (dual-stream).
    Other,
}

/// New text in a section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub section: Section,
    pub text: String,
}

/// Output that does not contain a verdict, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unparseable {
    pub reason: String,
}

impl std::fmt::Display for Unparseable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unparseable guard output: {}", self.reason)
    }
}

pub type Parsed = Result<Verdict, Unparseable>;

fn fail(reason: impl Into<String>) -> Unparseable {
    Unparseable { reason: reason.into() }
}

/// Lowercased line content without leading whitespace, markdown markers or list bullets.
fn line_key(line: &str) -> String {
    line.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '#' | '_' | '>' | '-' | '`'))
        .to_ascii_lowercase()
}

/// The value after a `key:` (or `key -` / `key =`), without emphasis or trailing punctuation.
fn value_after_key(line: &str, key_len_hint: &str) -> String {
    // ASCII lowercasing keeps byte offsets valid in `line`
    let lower = line.to_ascii_lowercase();
    let start = lower.find(key_len_hint).map(|i| i + key_len_hint.len()).unwrap_or(0);
    let rest = &line[start..];
    // skip the rest of the key word ("polic-ies"), then separators
    let rest = rest.trim_start_matches(|c: char| c.is_alphabetic());
    rest.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '-' | '=' | '*' | '_' | '`'))
        .trim()
        .trim_end_matches(['*', '_', '`', '.', ';'])
        .trim()
        .to_string()
}

fn parse_label(value: &str) -> Option<Label> {
    let v: String =
        value.chars().filter(|c| c.is_alphanumeric() || c.is_whitespace()).collect::<String>().to_lowercase();
    let first = v.split_whitespace().next()?;
    match first {
        "safe" => Some(Label::Safe),
        "unsafe" => Some(Label::Unsafe),
        "not" if v.split_whitespace().nth(1) == Some("safe") => Some(Label::Unsafe),
        _ => None,
    }
}

fn parse_policy_list(value: &str) -> Vec<Policy> {
    let v = value.trim().trim_matches(|c: char| matches!(c, '[' | ']' | '(' | ')'));
    let lower = v.to_lowercase();
    if matches!(lower.trim_matches(|c: char| !c.is_alphanumeric()), "" | "none" | "n a" | "na" | "no" | "nothing")
        || lower == "n/a"
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    for part in lower.replace(" and ", ",").split([',', ';', '/', '&', '|', '\n']) {
        if let Some(p) = Policy::from_name(part.trim_matches(|c: char| c == '"' || c == '\'' || c.is_whitespace())) {
            out.push(p);
        }
    }
    canonical(&out)
}

/// Reads a verdict line: `Classification` followed by `:` (or `-`, `=`) and a value. `None` when the
/// line is something else ("Classification of this text depends on…"); `Some(Err(value))` when it
/// is a verdict line whose value is not SAFE/UNSAFE.
fn verdict_label(line: &str) -> Option<Result<Label, String>> {
    let key = line_key(line);
    let rest = key.strip_prefix("classification")?;
    let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '*' || c == '_');
    let value = rest.strip_prefix([':', '-', '='])?;
    let value = value.trim_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '_' | '`' | '.' | ';'));
    Some(parse_label(value).ok_or_else(|| value.to_string()))
}

/// Finds the verdict in a block of text: the first valid `Classification:` line and, after it, the
/// optional `Violated policies:` line. Returns (byte offset where the verdict starts, label,
/// policies).
fn find_verdict(text: &str) -> Result<(usize, Label, Option<Vec<Policy>>), Unparseable> {
    let mut offset = 0;
    let mut found: Option<(usize, Label)> = None;
    let mut bad_value: Option<String> = None;
    let mut policies = None;
    for line in text.split_inclusive('\n') {
        match (found.is_some(), verdict_label(line)) {
            (false, Some(Ok(label))) => found = Some((offset, label)),
            (false, Some(Err(v))) => {
                bad_value.get_or_insert(v);
            }
            (true, _) if policies.is_none() && line_key(line).starts_with("violated polic") => {
                policies = Some(parse_policy_list(&value_after_key(line, "violated polic")));
            }
            _ => {}
        }
        offset += line.len();
    }
    let (at, label) = found.ok_or_else(|| match bad_value {
        Some(v) => fail(format!("classification `{v}` is neither SAFE nor UNSAFE")),
        None => fail("no `Classification:` line"),
    })?;
    Ok((at, label, policies))
}

fn verdict(label: Label, listed: Option<Vec<Policy>>, mode: Mode, reasoning: String, format: OutputFormat) -> Verdict {
    let policies = match (label, mode) {
        (Label::Safe, _) => Vec::new(),
        (Label::Unsafe, Mode::PerPolicy(p)) => vec![p],
        (Label::Unsafe, Mode::AllPolicies) => listed.unwrap_or_default(),
    };
    Verdict { label, policies, reasoning, format }
}

/// Removes a leading `Reasoning:` header.
fn strip_reasoning_header(s: &str) -> &str {
    let t = s.trim_start();
    let key = line_key(t);
    if key.starts_with("reasoning") {
        let first_line_end = t.find('\n').unwrap_or(t.len());
        let first = line_key(&t[..first_line_end]);
        let after = first
            .trim_start_matches("reasoning")
            .trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
        if after.is_empty() {
            return t[first_line_end..].strip_prefix('\n').unwrap_or(&t[first_line_end..]);
        }
        // "Reasoning: Step 1 …" on one line: keep what follows the colon
        if let Some(colon) = t[..first_line_end].find(':') {
            return &t[colon + 1..];
        }
    }
    t
}

/// The text between `<tag>` and `</tag>` (tags matched case-insensitively), if the tag opens.
fn tagged<'a>(text: &'a str, lower: &str, tag: &str) -> Option<(&'a str, bool)> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = lower.find(&open)? + open.len();
    match lower[start..].find(&close) {
        Some(end) => Some((&text[start..start + end], true)),
        None => Some((&text[start..], false)),
    }
}

/// Parses a complete guard output.
pub fn parse(text: &str, format: OutputFormat, mode: Mode) -> Parsed {
    match format {
        OutputFormat::Rsft => {
            let (at, label, listed) = find_verdict(text)?;
            let reasoning = strip_reasoning_header(&text[..at]).trim().to_string();
            Ok(verdict(label, listed, mode, reasoning, format))
        }
        OutputFormat::DualStream => {
            let lower = text.to_ascii_lowercase();
            let (answer, _) = tagged(text, &lower, "answer").ok_or_else(|| fail("no <answer> section"))?;
            let (label, listed) = match find_verdict(answer) {
                Ok((_, l, p)) => (l, p),
                // a bare "UNSAFE: violence" answer
                Err(_) => {
                    let t = answer.trim();
                    let label = parse_label(t).ok_or_else(|| {
                        fail(format!(
                            "answer `{}` holds no SAFE/UNSAFE verdict",
                            t.chars().take(80).collect::<String>()
                        ))
                    })?;
                    let rest = t.split_once([':', '\n']).map(|(_, r)| r).unwrap_or("");
                    (label, Some(parse_policy_list(rest)))
                }
            };
            let think = tagged(text, &lower, "think").map(|(t, _)| t.trim()).unwrap_or("");
            let proof = tagged(text, &lower, "proof").map(|(t, _)| t.trim()).unwrap_or("");
            let reasoning = match (think.is_empty(), proof.is_empty()) {
                (false, false) => format!("{think}\n\n{proof}"),
                (false, true) => think.to_string(),
                (true, _) => proof.to_string(),
            };
            Ok(verdict(label, listed, mode, reasoning, format))
        }
    }
}

/// Incremental parser for streamed output.
#[derive(Debug, Clone)]
pub struct StreamParser {
    format: OutputFormat,
    mode: Mode,
    text: String,
    /// Bytes of `text` already reported.
    emitted: usize,
    /// The stream has ended: an unterminated last line is now final.
    finished: bool,
}

const DUAL_TAGS: [(&str, Option<Section>); 6] = [
    ("<think>", Some(Section::Think)),
    ("</think>", None),
    ("<proof>", Some(Section::Proof)),
    ("</proof>", None),
    ("<answer>", Some(Section::Answer)),
    ("</answer>", None),
];

impl StreamParser {
    pub fn new(format: OutputFormat, mode: Mode) -> Self {
        StreamParser { format, mode, text: String::new(), emitted: 0, finished: false }
    }

    /// Everything received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Adds generated text; returns the newly classified pieces.
    pub fn push(&mut self, delta: &str) -> Vec<Update> {
        self.text.push_str(delta);
        let upto = self.stable_len();
        self.emit_until(upto)
    }

    /// The reasoning written so far (header stripped; verdict lines excluded).
    pub fn reasoning(&self) -> String {
        match self.format {
            OutputFormat::Rsft => {
                let end = self.rsft_verdict_start().unwrap_or(self.text.len());
                strip_reasoning_header(&self.text[..end]).trim().to_string()
            }
            OutputFormat::DualStream => {
                let lower = self.text.to_ascii_lowercase();
                let think = tagged(&self.text, &lower, "think").map(|(t, _)| t.trim().to_string()).unwrap_or_default();
                let proof = tagged(&self.text, &lower, "proof").map(|(t, _)| t.trim().to_string()).unwrap_or_default();
                if proof.is_empty() {
                    think
                } else {
                    format!("{think}\n\n{proof}")
                }
            }
        }
    }

    /// True once the verdict has been written in full, so generation may stop.
    pub fn is_complete(&self) -> bool {
        match self.format {
            OutputFormat::Rsft => {
                let Some(at) = self.rsft_verdict_start() else {
                    return false;
                };
                let tail = &self.text[at..];
                let complete_lines: Vec<&str> = tail.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
                match self.mode {
                    Mode::PerPolicy(_) => !complete_lines.is_empty(),
                    Mode::AllPolicies => {
                        complete_lines.iter().any(|l| line_key(l).starts_with("violated polic"))
                            || complete_lines.first().is_some_and(|l| {
                                parse_label(&value_after_key(l, "classification")) == Some(Label::Safe)
                                    && complete_lines.len() >= 2
                            })
                    }
                }
            }
            OutputFormat::DualStream => self.text.to_ascii_lowercase().contains("</answer>"),
        }
    }

    /// Flushes what is left and parses the whole output.
    pub fn finish(&mut self) -> (Vec<Update>, Parsed) {
        self.finished = true;
        let updates = self.emit_until(self.text.len());
        (updates, parse(&self.text, self.format, self.mode))
    }

    fn rsft_verdict_start(&self) -> Option<usize> {
        let mut off = 0;
        for line in self.text.split_inclusive('\n') {
            // an unterminated line can still change ("…: UNSAFE" + "ty"), so it only counts once
            // its newline arrives or the stream ends
            let settled = line.ends_with('\n') || self.finished;
            if settled && matches!(verdict_label(line), Some(Ok(_))) {
                return Some(off);
            }
            off += line.len();
        }
        None
    }

    /// Length of the prefix whose section is certain.
    fn stable_len(&self) -> usize {
        let t = &self.text;
        match self.format {
            OutputFormat::Rsft => {
                if self.rsft_verdict_start().is_some() {
                    return t.len();
                }
                // hold back a last, unfinished line that may still become "Classification:" or
                // the "Reasoning:" header
                let last_start = t.rfind('\n').map_or(0, |i| i + 1);
                let key = line_key(&t[last_start..]);
                let could_be =
                    |word: &str| key.len() < word.len() && word.starts_with(key.as_str()) || key.starts_with(word);
                // While nothing but blank lines precede it, the last line may still be the
                // "Reasoning:" header: hold everything (the header is stripped with what precedes it).
                if t[..last_start].trim().is_empty() && could_be("reasoning") {
                    0
                } else if could_be("classification") {
                    last_start
                } else {
                    t.len()
                }
            }
            OutputFormat::DualStream => {
                // hold back a trailing "<…" that may be the start of a tag
                match t.rfind('<') {
                    Some(i) if !t[i..].contains('>') && t.len() - i < 12 => i,
                    _ => t.len(),
                }
            }
        }
    }

    fn section_at(&self, pos: usize) -> Section {
        match self.format {
            OutputFormat::Rsft => match self.rsft_verdict_start() {
                Some(v) if pos >= v => Section::Verdict,
                _ => Section::Reasoning,
            },
            OutputFormat::DualStream => {
                let lower = self.text[..pos].to_ascii_lowercase();
                let mut best: (usize, Option<Section>) = (0, None);
                let mut any = false;
                for (tag, sec) in DUAL_TAGS {
                    if let Some(i) = lower.rfind(tag) {
                        if !any || i >= best.0 {
                            best = (i, sec);
                            any = true;
                        }
                    }
                }
                if !any {
                    Section::Other
                } else {
                    best.1.unwrap_or(Section::Other)
                }
            }
        }
    }

    /// Reports text[emitted..upto], split where the section changes; tags and the "Reasoning:"
    /// header are not reported as text.
    fn emit_until(&mut self, upto: usize) -> Vec<Update> {
        let mut out: Vec<Update> = Vec::new();
        if upto <= self.emitted {
            return out;
        }
        let t = self.text.clone();
        let mut pos = self.emitted;
        if self.format == OutputFormat::Rsft && pos == 0 {
            // skip the header if present
            let stripped = strip_reasoning_header(&t[..upto]);
            pos = upto - stripped.len();
        }
        while pos < upto {
            // tags (dual-stream) are consumed silently
            if self.format == OutputFormat::DualStream {
                let lower_rest = t[pos..upto].to_ascii_lowercase();
                if let Some((tag, _)) = DUAL_TAGS.iter().find(|(tag, _)| lower_rest.starts_with(tag)) {
                    pos += tag.len();
                    continue;
                }
            }
            // the first character's end: a char boundary, so slicing stays valid for any text
            let next = pos + t[pos..].chars().next().map_or(1, char::len_utf8);
            let sec = self.section_at(next.min(upto));
            // advance to the next boundary: a tag start, the verdict line, or upto
            let mut end = upto;
            if self.format == OutputFormat::DualStream {
                if let Some(i) = t[next.min(upto)..upto].find('<') {
                    end = next + i;
                }
            } else if let Some(v) = self.rsft_verdict_start() {
                if pos < v && v < upto {
                    end = v;
                }
            }
            let piece = &t[pos..end];
            match out.last_mut() {
                Some(u) if u.section == sec => u.text.push_str(piece),
                _ => out.push(Update { section: sec, text: piece.to_string() }),
            }
            pos = end;
        }
        self.emitted = upto;
        out.retain(|u| !u.text.is_empty());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pieces that stress the parser: tags, markers, multi-byte characters (including ones whose
    /// lowercase changes byte length), newlines.
    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "<think>",
            "</think>",
            "<proof>",
            "</proof>",
            "<answer>",
            "</answer>",
            "<",
            "<th",
            "Classification:",
            " SAFE",
            " UNSAFE",
            "\n",
            "Violated policies: violence",
            "Reasoning:",
            "é",
            "İ",
            "\u{212A}",
            "😀",
            "ß",
            "step ",
            "Σ",
        ])
        .prop_map(str::to_string)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text, cut into any chunks, gives the same updates (joined per section) as when it
        /// arrives in one piece, and never panics.
        #[test]
        fn chunking_never_changes_what_is_reported(parts in prop::collection::vec(piece(), 0..40), cuts in prop::collection::vec(1usize..9, 1..20)) {
            let text: String = parts.concat();
            for format in [OutputFormat::Rsft, OutputFormat::DualStream] {
                let mut whole = StreamParser::new(format, Mode::AllPolicies);
                let mut expect = whole.push(&text);
                let (rest, v1) = whole.finish();
                expect.extend(rest);
                let mut p = StreamParser::new(format, Mode::AllPolicies);
                let mut got = Vec::new();
                let chars: Vec<char> = text.chars().collect();
                let (mut i, mut k) = (0, 0);
                while i < chars.len() {
                    let n = cuts[k % cuts.len()].min(chars.len() - i);
                    got.extend(p.push(&chars[i..i + n].iter().collect::<String>()));
                    let _ = p.is_complete();
                    let _ = p.reasoning();
                    i += n;
                    k += 1;
                }
                let (rest, v2) = p.finish();
                got.extend(rest);
                let join = |u: &[Update]| {
                    let mut out: Vec<(Section, String)> = Vec::new();
                    for x in u {
                        match out.last_mut() {
                            Some((s, t)) if *s == x.section => t.push_str(&x.text),
                            _ => out.push((x.section, x.text.clone())),
                        }
                    }
                    out
                };
                prop_assert_eq!(join(&got), join(&expect));
                prop_assert_eq!(v1, v2);
            }
        }
    }

    const RSFT: &str = "Reasoning:\nStep 1: The user asks how to bully a classmate.\nStep 2: It targets a person.\n\nClassification: UNSAFE\nViolated policies: harassment, violence";

    #[test]
    fn parses_the_canonical_rsft_output() {
        let v = parse(RSFT, OutputFormat::Rsft, Mode::AllPolicies).unwrap();
        assert_eq!(v.label, Label::Unsafe);
        assert_eq!(v.policies, vec![Policy::Violence, Policy::Harassment]);
        assert_eq!(v.reasoning, "Step 1: The user asks how to bully a classmate.\nStep 2: It targets a person.");
    }

    #[test]
    fn tolerates_small_drift() {
        for (text, label, policies) in [
            ("Step 1: fine.\nclassification: safe\nviolated policies: None.", Label::Safe, vec![]),
            (
                "Step 1: x\n**Classification:** Unsafe\n**Violated Policies:** Hate Speech and self-harm",
                Label::Unsafe,
                vec![Policy::HateSpeech, Policy::SelfHarm],
            ),
            (
                "Reasoning: short.\nCLASSIFICATION :UNSAFE\nViolated policies: [illegal]",
                Label::Unsafe,
                vec![Policy::Illegal],
            ),
            (
                "Step 1: x\n  Classification - UNSAFE.\nViolated policies: violence; sexual content",
                Label::Unsafe,
                vec![Policy::Violence, Policy::Sexual],
            ),
            ("Step 1: x\nClassification: UNSAFE", Label::Unsafe, vec![]),
            ("Step 1: x\nClassification: SAFE\nViolated policies: violence", Label::Safe, vec![]),
            (
                "Step 1: x\nClassification: not safe\nViolated policies: harassment",
                Label::Unsafe,
                vec![Policy::Harassment],
            ),
        ] {
            let v = parse(text, OutputFormat::Rsft, Mode::AllPolicies).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!((v.label, v.policies), (label, policies), "{text:?}");
        }
    }

    #[test]
    fn unparseable_says_why() {
        let e = parse("I think this is fine.", OutputFormat::Rsft, Mode::AllPolicies).unwrap_err();
        assert!(e.reason.contains("no `Classification:` line"));
        let e = parse("Classification: maybe", OutputFormat::Rsft, Mode::AllPolicies).unwrap_err();
        assert!(e.reason.contains("`maybe` is neither SAFE nor UNSAFE"), "{}", e.reason);
        let e = parse("<think>x</think>", OutputFormat::DualStream, Mode::AllPolicies).unwrap_err();
        assert!(e.reason.contains("no <answer>"));
    }

    #[test]
    fn per_policy_mode_names_the_policy() {
        let v = parse(
            "Reasoning:\nStep 1: hacking.\n\nClassification: UNSAFE",
            OutputFormat::Rsft,
            Mode::PerPolicy(Policy::Illegal),
        )
        .unwrap();
        assert_eq!(v.policies, vec![Policy::Illegal]);
    }

    #[test]
    fn dual_stream_verdict_comes_from_the_answer() {
        let text = "<think>\nThe phrase is a metaphor.\n</think>\n<proof>\n\"annihilate\" refers to market share\n</proof>\n<answer>\nClassification: SAFE\nViolated policies: none\n</answer>";
        let v = parse(text, OutputFormat::DualStream, Mode::AllPolicies).unwrap();
        assert_eq!(v.label, Label::Safe);
        assert_eq!(v.reasoning, "The phrase is a metaphor.\n\n\"annihilate\" refers to market share");
        let bare =
            parse("<think>t</think><answer>UNSAFE: violence</answer>", OutputFormat::DualStream, Mode::AllPolicies)
                .unwrap();
        assert_eq!((bare.label, bare.policies), (Label::Unsafe, vec![Policy::Violence]));
    }

    /// Streamed in chunks of every size, the reported text equals the output minus header and
    /// tags, sections come in order, and the final verdict equals the one-shot parse.
    #[test]
    fn streaming_in_any_chunking_reports_every_character_once() {
        let dual = "<think>\nStep 1: a metaphor.\n</think>\n<proof>\nmarket share\n</proof>\n<answer>\nClassification: SAFE\nViolated policies: none\n</answer>";
        for (text, format) in [(RSFT, OutputFormat::Rsft), (dual, OutputFormat::DualStream)] {
            for chunk in 1..8 {
                let mut p = StreamParser::new(format, Mode::AllPolicies);
                let mut all: Vec<Update> = Vec::new();
                let chars: Vec<char> = text.chars().collect();
                for c in chars.chunks(chunk) {
                    all.extend(p.push(&c.iter().collect::<String>()));
                }
                let (rest, verdict) = p.finish();
                all.extend(rest);
                let joined: String = all.iter().map(|u| u.text.as_str()).collect();
                let mut expect = text.replace("Reasoning:\n", "");
                for (tag, _) in DUAL_TAGS {
                    expect = expect.replace(tag, "");
                }
                assert_eq!(joined, expect, "{format:?} chunk {chunk}");
                assert_eq!(verdict.unwrap(), parse(text, format, Mode::AllPolicies).unwrap());
                let order: Vec<Section> = all.iter().map(|u| u.section).collect();
                match format {
                    OutputFormat::Rsft => {
                        let first_verdict = order.iter().position(|s| *s == Section::Verdict).unwrap();
                        assert!(order[..first_verdict].iter().all(|s| *s == Section::Reasoning));
                        assert!(order[first_verdict..].iter().all(|s| *s == Section::Verdict));
                        let reasoning: String =
                            all.iter().filter(|u| u.section == Section::Reasoning).map(|u| u.text.as_str()).collect();
                        assert!(!reasoning.to_lowercase().contains("classification"));
                    }
                    OutputFormat::DualStream => {
                        let think: String =
                            all.iter().filter(|u| u.section == Section::Think).map(|u| u.text.as_str()).collect();
                        assert_eq!(think.trim(), "Step 1: a metaphor.");
                        let ans: String =
                            all.iter().filter(|u| u.section == Section::Answer).map(|u| u.text.as_str()).collect();
                        assert!(ans.contains("Classification: SAFE"));
                    }
                }
            }
        }
    }

    /// A reasoning line that merely starts with "Classification" is not the verdict, and a bad
    /// verdict line followed by a good one (e.g. a forced verdict) gives the good one.
    #[test]
    fn only_a_classification_line_with_a_value_is_the_verdict() {
        let text = "Step 1: Classification of this text depends on intent.\nClassification: maybe\nClassification: SAFE\nViolated policies: none";
        let v = parse(text, OutputFormat::Rsft, Mode::AllPolicies).unwrap();
        assert_eq!(v.label, Label::Safe);
        assert!(v.reasoning.contains("Classification of this text"), "{}", v.reasoning);
        let mut p = StreamParser::new(OutputFormat::Rsft, Mode::PerPolicy(Policy::Illegal));
        p.push("Step 1: Classification of this request\n");
        assert!(!p.is_complete(), "a reasoning line must not end generation");
    }

    #[test]
    fn completion_is_detected_for_early_stop() {
        let mut p = StreamParser::new(OutputFormat::Rsft, Mode::AllPolicies);
        p.push("Reasoning:\nStep 1: x\n\nClassification: UNSAFE\n");
        assert!(!p.is_complete());
        p.push("Violated policies: violence");
        assert!(!p.is_complete());
        p.push("\n");
        assert!(p.is_complete());
        let mut d = StreamParser::new(OutputFormat::DualStream, Mode::AllPolicies);
        d.push("<think>a</think><answer>SAFE</answ");
        assert!(!d.is_complete());
        d.push("er>");
        assert!(d.is_complete());
    }
}
