//! Tokenizers rebuilt from GGUF metadata: GPT-2 byte-level BPE (`tokenizer.ggml.model = "gpt2"`,
//! SmolLM2, Qwen, Llama 3) and SentencePiece BPE (`"llama"`, Gemma 3).
//!
//! The BPE core is the `tokenizers` crate. Splitting the text around special tokens is done here, the
//! way llama.cpp does it, so ids match llama.cpp exactly:
//! - user-defined tokens (type 4, e.g. Gemma's `"\n\n"` or `<table>`) are always recognised;
//! - control tokens (type 3, e.g. `<|im_end|>`) only in [`Tokenizer::encode_special`], which is meant
//!   for template text. User content goes through [`Tokenizer::encode`], where a typed `<|im_end|>`
//!   stays plain text.
//!
//! Decoding is done here too (llama.cpp's `token_to_piece`): [`TokenDecoder`] turns a stream of ids
//! into text without ever splitting a UTF-8 character.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Token types as stored in `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_i64(v: i64) -> Self {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// GPT-2 style byte-level BPE with merges.
    Gpt2Bpe,
    /// SentencePiece BPE: merges implied by token scores, byte fallback, `▁` for spaces.
    SentencePiece,
}

/// Largest vocabulary accepted (Gemma 3 has 262,144; this bounds allocations on a corrupt file).
const MAX_VOCAB: usize = 1 << 21;

pub struct Tokenizer {
    kind: VocabKind,
    bpe: tokenizers::Tokenizer,
    /// Bytes each token decodes to (empty for control tokens).
    pieces: Vec<Vec<u8>>,
    texts: Vec<String>,
    types: Vec<TokenType>,
    by_text: HashMap<String, u32>,
    /// Always-recognised tokens, longest first.
    user_defined: Vec<(String, u32)>,
    /// Recognised only in template text, longest first.
    control: Vec<(String, u32)>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    byte_tokens: Option<Box<[u32; 256]>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("kind", &self.kind).field("vocab", &self.texts.len()).finish()
    }
}

/// A piece of the input after special-token partitioning.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let err = |what: String| Error::Tokenizer { file: g.name().to_string(), what };
        let model = g.str("tokenizer.ggml.model")?;
        let kind = match model {
            "gpt2" => VocabKind::Gpt2Bpe,
            "llama" => VocabKind::SentencePiece,
            other => {
                return Err(err(format!(
                    "vocabulary type `{other}` is not supported (vigil reads gpt2 and llama/SentencePiece)"
                )))
            }
        };
        let texts: Vec<String> = g.str_array("tokenizer.ggml.tokens")?.to_vec();
        if texts.is_empty() || texts.len() > MAX_VOCAB {
            return Err(err(format!("vocabulary of {} tokens (expected 1..={MAX_VOCAB})", texts.len())));
        }
        let n = texts.len();
        let types: Vec<TokenType> = match g.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; n],
            Some(_) => {
                let arr = g.f64_array("tokenizer.ggml.token_type")?;
                if arr.len() != n {
                    return Err(err(format!("{} token types for {n} tokens", arr.len())));
                }
                arr.iter().map(|&v| TokenType::from_i64(v as i64)).collect()
            }
        };
        let special_id = |key: &str| -> Result<Option<u32>> {
            match g.opt_u64(key)? {
                Some(id) if id < n as u64 => Ok(Some(id as u32)),
                Some(id) => Err(err(format!("{key} = {id} is outside the vocabulary of {n}"))),
                None => Ok(None),
            }
        };
        let bos = special_id("tokenizer.ggml.bos_token_id")?;
        let eos = special_id("tokenizer.ggml.eos_token_id")?;
        let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(kind == VocabKind::SentencePiece);
        let add_space_prefix =
            g.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(kind == VocabKind::SentencePiece);

        let mut by_text = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            by_text.insert(t.clone(), i as u32);
        }

        let (bpe, pieces, byte_tokens) = match kind {
            VocabKind::Gpt2Bpe => {
                let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
                let merges = g.str_array("tokenizer.ggml.merges")?;
                let bpe = build_gpt2(&texts, merges, pre).map_err(err)?;
                let table = byte_level_decode_table();
                // Byte-level BPE drops characters whose bytes have no token (llama.cpp does the same).
                // Real vocabularies lack a few (SmolLM2: six ASCII controls, bytes that never occur
                // in UTF-8, and 0xF1/0xF2, which only start characters of unassigned planes); a
                // vocabulary lacking a byte of readable text would hide content from the guard.
                let needed = |b: u8| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e | 0x80..=0xbf | 0xc2..=0xf0);
                if let Some((c, b)) = table.iter().find(|(c, b)| needed(**b) && !by_text.contains_key(&c.to_string())) {
                    return Err(err(format!("the byte-level vocabulary has no token for byte {b:#04x} (`{c}`): text using it would be dropped")));
                }
                let pieces = texts
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match ty {
                        TokenType::Control | TokenType::Unknown => Vec::new(),
                        TokenType::UserDefined => t.as_bytes().to_vec(),
                        _ => t.chars().map(|c| table.get(&c).copied().unwrap_or(b'?')).collect(),
                    })
                    .collect();
                (bpe, pieces, None)
            }
            VocabKind::SentencePiece => {
                let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
                    Some(_) => {
                        let arr = g.f64_array("tokenizer.ggml.scores")?;
                        if arr.len() != n {
                            return Err(err(format!("{} scores for {n} tokens", arr.len())));
                        }
                        arr.iter().map(|&v| v as f32).collect()
                    }
                    None => return Err(err("SentencePiece vocabulary without tokenizer.ggml.scores".into())),
                };
                let mut bytes = Box::new([u32::MAX; 256]);
                for (i, (t, ty)) in texts.iter().zip(&types).enumerate() {
                    if *ty == TokenType::Byte {
                        if let Some(b) = parse_byte_token(t) {
                            bytes[b as usize] = i as u32;
                        }
                    }
                }
                let unk = g.opt_u64("tokenizer.ggml.unknown_token_id")?.map(|u| u as usize).filter(|&u| u < n);
                let bpe = build_spm(&texts, &types, &scores, unk).map_err(err)?;
                let pieces = texts
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match ty {
                        TokenType::Control | TokenType::Unknown => Vec::new(),
                        TokenType::Byte => parse_byte_token(t).map(|b| vec![b]).unwrap_or_default(),
                        TokenType::UserDefined => t.as_bytes().to_vec(),
                        _ => t.replace('\u{2581}', " ").into_bytes(),
                    })
                    .collect();
                (bpe, pieces, Some(bytes))
            }
        };

        let mut user_defined = Vec::new();
        let mut control = Vec::new();
        for (i, (t, ty)) in texts.iter().zip(&types).enumerate() {
            if t.is_empty() {
                continue;
            }
            match ty {
                TokenType::UserDefined => user_defined.push((t.clone(), i as u32)),
                TokenType::Control | TokenType::Unknown => control.push((t.clone(), i as u32)),
                _ => {}
            }
        }
        // Longest first, as llama.cpp partitions; ties by id for determinism.
        let by_len = |a: &(String, u32), b: &(String, u32)| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1));
        user_defined.sort_by(by_len);
        control.sort_by(by_len);

        Ok(Tokenizer {
            kind,
            bpe,
            pieces,
            texts,
            types,
            by_text,
            user_defined,
            control,
            bos,
            eos,
            add_bos,
            add_space_prefix,
            byte_tokens,
        })
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// Whether the model expects a BOS token at the start of a sequence.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// The id of a token given its exact text (e.g. `<|im_end|>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    /// True for control tokens (end of turn, BOS/EOS, role markers).
    pub fn is_control(&self, id: u32) -> bool {
        matches!(self.token_type(id), Some(TokenType::Control | TokenType::Unknown))
    }

    /// Encodes user content: control-token text stays plain text. No BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode_impl(text, false)?;
        // Belt and braces: a vocabulary with duplicate token texts could let a merge land on a
        // control id; content must never carry one.
        if let Some(&id) = ids.iter().find(|&&i| self.is_control(i)) {
            return Err(Error::Tokenizer {
                file: "<tokenizer>".into(),
                what: format!(
                    "content encoded to control token {id} ({:?}): the vocabulary is inconsistent",
                    self.token_text(id)
                ),
            });
        }
        Ok(ids)
    }

    /// Encodes template text: control tokens written in it (`<|im_start|>`) become their ids.
    /// Never pass user content here.
    pub fn encode_special(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_impl(text, true)
    }

    fn encode_impl(&self, text: &str, parse_control: bool) -> Result<Vec<u32>> {
        let mut frags = vec![Fragment::Text(text)];
        if parse_control {
            frags = partition(frags, &self.control);
        }
        frags = partition(frags, &self.user_defined);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut prev_special = true;
        let mut buf = String::new();
        for f in frags {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    let t = if self.kind == VocabKind::SentencePiece && self.add_space_prefix && prev_special {
                        buf.clear();
                        buf.push(' ');
                        buf.push_str(t);
                        buf.as_str()
                    } else {
                        t
                    };
                    prev_special = false;
                    if t.is_empty() {
                        continue;
                    }
                    let enc = self
                        .bpe
                        .encode_fast(t, false)
                        .map_err(|e| Error::Tokenizer { file: "<tokenizer>".into(), what: e.to_string() })?;
                    out.extend_from_slice(enc.get_ids());
                }
            }
        }
        Ok(out)
    }

    /// The bytes a token stands for (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Decodes ids to text (control tokens omitted, invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The token of a single byte (SentencePiece byte fallback), if the vocabulary has one.
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens.as_ref().map(|t| t[b as usize]).filter(|&i| i != u32::MAX)
    }
}

/// Splits text fragments around every occurrence of each token, longest tokens first.
fn partition<'a>(frags: Vec<Fragment<'a>>, tokens: &[(String, u32)]) -> Vec<Fragment<'a>> {
    let mut frags = frags;
    for (tok, id) in tokens {
        if !frags.iter().any(|f| matches!(f, Fragment::Text(t) if t.contains(tok.as_str()))) {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            match f {
                Fragment::Text(mut t) => {
                    while let Some(pos) = t.find(tok.as_str()) {
                        if pos > 0 {
                            next.push(Fragment::Text(&t[..pos]));
                        }
                        next.push(Fragment::Token(*id));
                        t = &t[pos + tok.len()..];
                    }
                    if !t.is_empty() {
                        next.push(Fragment::Text(t));
                    }
                }
                tok_frag => next.push(tok_frag),
            }
        }
        frags = next;
    }
    frags
}

/// Pre-tokenizer regexes per `tokenizer.ggml.pre`, as llama.cpp applies them (in order).
fn pre_tokenizer_regexes(pre: &str) -> Option<Vec<&'static str>> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" => vec![GPT2],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            vec![LLAMA3]
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => vec![QWEN2],
        "default" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        _ => return None,
    })
}

fn build_gpt2(texts: &[String], merges: &[String], pre: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    let regexes = pre_tokenizer_regexes(pre).ok_or_else(|| {
        format!(
            "pre-tokenizer `{pre}` is not supported (vigil knows gpt-2, smollm, starcoder, llama-bpe, qwen2, default)"
        )
    })?;
    let vocab: tokenizers::models::bpe::Vocab = texts.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut it = m.splitn(2, ' ');
            match (it.next(), it.next()) {
                (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                    Ok((a.to_string(), b.to_string()))
                }
                _ => Err(format!("merge {i} `{m}` is not two tokens separated by one space")),
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| e.to_string())?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in regexes {
        let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| format!("pre-tokenizer regex: {e}"))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(steps)));
    Ok(tk)
}

/// SentencePiece BPE as llama.cpp runs it: repeatedly merge the adjacent pair whose concatenation is
/// the highest-scoring token. Expressed as BPE merges: every split `(a, b)` of a token `ab` where both
/// halves are tokens, ranked by the score of `ab` (ties by id).
fn build_spm(
    texts: &[String],
    types: &[TokenType],
    scores: &[f32],
    unk: Option<usize>,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    let mergeable = |i: usize| matches!(types[i], TokenType::Normal | TokenType::Undefined | TokenType::Unused);
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        index.insert(t.as_str(), i);
    }
    let mut ranked: Vec<(f32, usize, usize, usize)> = Vec::new(); // (score, merged id, left id, right id)
    for (id, t) in texts.iter().enumerate() {
        if !mergeable(id) || t.chars().nth(1).is_none() {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if let (Some(&l), Some(&r)) = (index.get(a), index.get(b)) {
                ranked.push((scores[id], id, l, r));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<(String, String)> =
        ranked.into_iter().map(|(_, _, l, r)| (texts[l].clone(), texts[r].clone())).collect();
    let vocab: tokenizers::models::bpe::Vocab = texts.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(texts[u].clone());
    }
    let bpe = builder.build().map_err(|e| e.to_string())?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", "\u{2581}").map_err(|e| e.to_string())?;
    tk.with_normalizer(Some(NormalizerWrapper::from(space))).map_err(|e| e.to_string())?;
    Ok(tk)
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte ↔ printable-character table, reversed (character → byte).
fn byte_level_decode_table() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table.insert(char::from_u32(c).unwrap(), b as u8);
    }
    table
}

/// Incremental detokenizer: feed ids, get text, never a broken UTF-8 character.
#[derive(Debug, Default, Clone)]
pub struct TokenDecoder {
    pending: Vec<u8>,
}

impl TokenDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(), // incomplete tail: wait
            Err(_) => {
                // invalid bytes that no continuation can fix: emit them replaced
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
        };
        let rest = self.pending.split_off(valid);
        String::from_utf8(std::mem::replace(&mut self.pending, rest)).unwrap_or_default()
    }

    /// Whatever is left at the end of the stream (replaced if incomplete).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value};

    fn tiny() -> GgufWriter {
        let bytes = crate::testing::tiny_llama(crate::gguf::GgmlType::F32, 1);
        let g = Gguf::from_bytes("t.gguf", bytes).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in g.metadata() {
            w.set(k.clone(), v.clone());
        }
        w
    }

    fn build(w: &GgufWriter) -> Result<Tokenizer> {
        Tokenizer::from_gguf(&Gguf::from_bytes("t.gguf", w.to_bytes()).unwrap())
    }

    #[test]
    fn byte_level_vocabulary_round_trips_any_text() {
        let tok = build(&tiny()).unwrap();
        let text = "héllo <|im_end|> 😀";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids), text);
        assert!(!ids.contains(&tok.token_id("<|im_end|>").unwrap()));
        assert_eq!(tok.encode_special("<|im_end|>").unwrap(), vec![258]);
    }

    #[test]
    fn a_byte_vocabulary_missing_a_text_byte_is_refused() {
        let mut w = tiny();
        let g = Gguf::from_bytes("t.gguf", w.to_bytes()).unwrap();
        let mut tokens = g.str_array("tokenizer.ggml.tokens").unwrap().to_vec();
        tokens[b'a' as usize] = "not-a".into();
        w.set("tokenizer.ggml.tokens", Value::str_array(tokens.clone()));
        assert!(build(&w).unwrap_err().to_string().contains("byte 0x61"));
        // a missing control byte is tolerated (and dropped, as llama.cpp drops it)
        let mut tokens = g.str_array("tokenizer.ggml.tokens").unwrap().to_vec();
        tokens[0x14] = "gone".into();
        w.set("tokenizer.ggml.tokens", Value::str_array(tokens));
        let tok = build(&w).unwrap();
        assert_eq!(tok.decode(&tok.encode("a\u{14}b").unwrap()), "ab");
    }

    #[test]
    fn missing_or_inconsistent_keys_are_named() {
        type Edit = fn(&mut GgufWriter);
        let cases: [(Edit, &str); 8] = [
            (|w| w.remove("tokenizer.ggml.model"), "`tokenizer.ggml.model`: missing"),
            (|w| w.remove("tokenizer.ggml.tokens"), "`tokenizer.ggml.tokens`: missing"),
            (|w| w.remove("tokenizer.ggml.merges"), "`tokenizer.ggml.merges`: missing"),
            (
                |w| {
                    w.set("tokenizer.ggml.model", Value::string("bert"));
                },
                "vocabulary type `bert` is not supported",
            ),
            (
                |w| {
                    w.set("tokenizer.ggml.pre", Value::string("weird"));
                },
                "pre-tokenizer `weird` is not supported",
            ),
            (
                |w| {
                    w.set("tokenizer.ggml.token_type", Value::i32_array([1, 1]));
                },
                "2 token types for 259 tokens",
            ),
            (
                |w| {
                    w.set("tokenizer.ggml.bos_token_id", Value::U32(9999));
                },
                "outside the vocabulary of 259",
            ),
            (
                |w| {
                    w.set("tokenizer.ggml.merges", Value::str_array(["Ġt"]));
                },
                "merge 0 `Ġt` is not two tokens",
            ),
        ];
        for (edit, needle) in cases {
            let mut w = tiny();
            edit(&mut w);
            let e = build(&w).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("t.gguf"), "expected {needle:?} in: {e}");
        }
    }
}
