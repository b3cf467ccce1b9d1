//! Bad GGUF input: every malformed file gives an error that says where and what — never a panic and
//! never an allocation sized by an unchecked header. A counting global allocator records the largest
//! single allocation made while parsing; it must stay proportional to the file's length.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use vigil_models::gguf::{GgmlType, Gguf, GgufWriter, Value};
use vigil_models::testing::model_for_test;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
}

fn note(size: usize) {
    // try_with: the allocator also runs while thread-locals are torn down
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Parses `bytes` with the allocation counter armed; returns the result and the largest allocation.
fn parse_counted(bytes: &[u8]) -> (Result<(), String>, usize) {
    LARGEST.with(|m| m.set(0));
    ARMED.with(|a| a.set(true));
    let r = Gguf::validate("test.gguf", bytes).map_err(|e| e.to_string());
    ARMED.with(|a| a.set(false));
    (r, LARGEST.with(|m| m.get()))
}

/// The bound every parse must respect: a small constant plus a few times the input length.
fn alloc_bound(len: usize) -> usize {
    4 * len + (256 << 10)
}

fn check_input(bytes: &[u8]) -> Result<(), String> {
    let (r, largest) = parse_counted(bytes);
    assert!(
        largest <= alloc_bound(bytes.len()),
        "parsing {} bytes allocated {largest} bytes at once ({:?})",
        bytes.len(),
        r
    );
    r
}

/// A small valid file with metadata of several kinds and three tensors.
fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::string("llama"));
    w.set("general.name", Value::string("sample"));
    w.set("llama.block_count", Value::U32(2));
    w.set("tokenizer.ggml.tokens", Value::str_array(["a", "b", "<|im_end|>"]));
    w.set("tokenizer.ggml.scores", Value::f32_array([0.0, -1.0, -2.0]));
    w.add_f32("t.f32", &[4, 2], GgmlType::F32, &[1.0; 8]).unwrap();
    w.add_f32("t.q8", &[32, 2], GgmlType::Q8_0, &[0.5; 64]).unwrap();
    w.add_f32("t.q41", &[32], GgmlType::Q4_1, &[0.25; 32]).unwrap();
    w.to_bytes()
}

#[test]
fn sample_is_valid_and_every_truncation_is_an_error() {
    let s = sample();
    check_input(&s).unwrap();
    for n in 0..s.len() - 1 {
        // Cutting into the padding after the last tensor's data still leaves a complete file.
        let r = check_input(&s[..n]);
        let data_end = {
            let g = Gguf::from_bytes("s", s.clone()).unwrap();
            let last = g.tensors().iter().map(|t| g.data_offset() + t.offset + t.n_bytes).max().unwrap();
            last as usize
        };
        if n < data_end {
            let e = r.expect_err(&format!("truncated to {n} bytes but parsed"));
            assert!(e.contains("test.gguf"), "error does not name the file: {e}");
        }
    }
}

fn expect_error(bytes: &[u8], needle: &str) {
    let e = check_input(bytes).expect_err("parsed");
    assert!(e.contains(needle), "expected an error mentioning {needle:?}, got: {e}");
}

/// Builds a header by hand (v3 layout unless `version` says 1).
struct Raw {
    buf: Vec<u8>,
    version: u32,
}
impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw { buf: b"GGUF".to_vec(), version };
        r.u32(version);
        r.len(n_tensors);
        r.len(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn len(&mut self, v: u64) -> &mut Self {
        if self.version == 1 {
            self.u32(v as u32)
        } else {
            self.u64(v)
        }
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.len(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.len(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_and_data(&mut self, data: usize) -> Vec<u8> {
        let mut b = self.buf.clone();
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    }
}

#[test]
fn clear_errors_for_each_kind_of_corruption() {
    expect_error(b"GGML\x03\0\0\0", "not a GGUF file");
    expect_error(&Raw::new(0, 0, 0).buf, "unsupported GGUF version 0");
    expect_error(&Raw::new(4, 0, 0).buf, "unsupported GGUF version 4");
    expect_error(&Raw::new(3, u64::MAX, 0).buf, "tensor count");
    expect_error(&Raw::new(3, 0, 1 << 60).buf, "metadata count");
    // a string whose length is far beyond the file
    let padded = |r: &Raw| [r.buf.as_slice(), &[0u8; 64]].concat();
    expect_error(&padded(Raw::new(3, 0, 1).u64(u64::MAX)), "metadata key length");
    // an array claiming 2^61 u64 elements
    expect_error(&padded(Raw::new(3, 0, 1).str("k").u32(9).u32(10).u64(1 << 61)), "array element count");
    expect_error(&Raw::new(3, 0, 1).str("k").u32(13).buf, "unknown value type 13");
    expect_error(&Raw::new(3, 0, 1).str("k").u32(7).buf, "truncated");
    let mut bad_bool = Raw::new(3, 0, 1);
    bad_bool.str("k").u32(7).buf.push(2);
    expect_error(&bad_bool.buf, "neither 0 nor 1");
    let mut dup = Raw::new(3, 0, 2);
    dup.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    expect_error(&dup.buf, "duplicate metadata key `k`");
    expect_error(&Raw::new(3, 0, 1).str("general.alignment").u32(4).u32(24).buf, "power-of-two");
    expect_error(
        &Raw::new(3, 0, 1).str("k").u32(8).u64(2).buf.iter().chain(b"\xff\xfe").copied().collect::<Vec<_>>(),
        "UTF-8",
    );

    let tensor_err = |dims: &[u64], ty: u32, offset: u64, data: usize, needle: &str| {
        let mut r = Raw::new(3, 1, 0);
        r.tensor("w", dims, ty, offset);
        expect_error(&r.pad_and_data(data), needle);
    };
    tensor_err(&[4, 4, 4, 4, 4], 0, 0, 4096, "5 dimensions");
    tensor_err(&[4, 0], 0, 0, 64, "zero dimension");
    tensor_err(&[4], 4, 0, 64, "unknown ggml type 4");
    tensor_err(&[33], 8, 0, 64, "not a multiple of the Q8_0 block size");
    tensor_err(&[1 << 40, 1 << 40], 0, 0, 64, "overflow");
    tensor_err(&[8], 0, 16, 64, "not aligned");
    tensor_err(&[64], 0, 0, 100, "runs past the end");
    tensor_err(&[8], 0, u64::MAX - 31, 64, "runs past the end");

    let mut overlap = Raw::new(3, 2, 0);
    overlap.tensor("a", &[16], 0, 0).tensor("b", &[16], 0, 32);
    expect_error(&overlap.pad_and_data(256), "overlap");
    let mut dup_t = Raw::new(3, 2, 0);
    dup_t.tensor("a", &[8], 0, 0).tensor("a", &[8], 0, 32);
    expect_error(&dup_t.pad_and_data(256), "duplicate tensor name `a`");
}

/// GGUF v1 (u32 lengths and counts) and v2 files are read too.
#[test]
fn reads_v1_and_v2_files() {
    for version in [1, 2] {
        let mut r = Raw::new(version, 1, 2);
        r.str("general.architecture").u32(8).str("llama");
        r.str("arr").u32(9).u32(8).len(2).str("x").str("yz");
        r.tensor("w", &[8, 2], 0, 0);
        let mut bytes = r.pad_and_data(64);
        let start = bytes.len() - 64;
        for i in 0..16 {
            bytes[start + 4 * i..start + 4 * i + 4].copy_from_slice(&(i as f32).to_le_bytes());
        }
        let g = Gguf::from_bytes("v.gguf", bytes).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.str_array("arr").unwrap(), ["x", "yz"]);
        assert_eq!(g.tensor("w").unwrap().dims, vec![8, 2]);
        assert_eq!(g.tensor_f32("w").unwrap()[15], 15.0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bit flips and byte overwrites anywhere in a small valid file.
    #[test]
    fn mutated_sample_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
                                   writes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3)) {
        let mut s = sample();
        for (i, bit) in flips { let i = i.index(s.len()); s[i] ^= 1 << bit; }
        for (i, b) in writes { let i = i.index(s.len()); s[i] = b; }
        let _ = check_input(&s);
    }
}

/// Truncations and bit flips of the real SmolLM2 header (vocabulary, merges, 272 tensor infos).
#[test]
fn real_header_truncated_or_flipped_never_panics() {
    let Some(path) = model_for_test("smollm2") else {
        return;
    };
    let bytes = std::cell::RefCell::new(std::fs::read(&path).unwrap());
    let data_offset = Gguf::open(&path).unwrap().data_offset() as usize;
    check_input(&bytes.borrow()).unwrap();

    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(0..data_offset + 4096), |n| {
            let r = check_input(&bytes.borrow()[..n]);
            prop_assert!(r.is_err(), "truncated to {} bytes but parsed", n);
            Ok(())
        })
        .unwrap();
    runner
        .run(&prop::collection::vec((0..data_offset, 0u8..8), 1..4), |flips| {
            let mut b = bytes.borrow_mut();
            for &(i, bit) in &flips {
                b[i] ^= 1 << bit;
            }
            let _ = check_input(&b);
            for &(i, bit) in &flips {
                b[i] ^= 1 << bit;
            }
            Ok(())
        })
        .unwrap();
}
