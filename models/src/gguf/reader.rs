//! Bounds-checked GGUF reader (v1–v3).
//!
//! The file is read in phases — header, key/values, tensor infos, data — and every count, length and
//! offset is checked against the bytes that remain *before* anything is allocated, so a truncated or
//! corrupted header produces an error naming the byte offset, never a panic or a huge allocation.

use std::collections::HashMap;
use std::sync::Arc;

use super::types::GgmlType;
use super::value::{Array, Value, ValueType};
use crate::error::{Error, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays (the spec allows them; nothing real goes deeper than 1).
const MAX_ARRAY_DEPTH: u32 = 3;
/// Largest up-front capacity for lists whose elements are bigger in memory than on disk.
const INITIAL_CAP: usize = 4096;

/// The bytes of a GGUF file: memory-mapped natively, owned in wasm or when given bytes.
pub enum Bytes {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mmap(m) => m,
        }
    }
}

/// Where a tensor lives and what it is. `dims[0]` is the innermost (contiguous) dimension, as in ggml.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row-major shape (outermost first), the order candle and PyTorch use.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file. Cheap to clone: metadata, tensor infos and bytes are shared.
#[derive(Clone)]
pub struct Gguf(Arc<Inner>);

struct Inner {
    name: String,
    version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    bytes: Bytes,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("name", &self.0.name)
            .field("version", &self.0.version)
            .field("metadata", &self.0.metadata.len())
            .field("tensors", &self.0.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-map and parse a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file changed underneath us by another process is outside
        // what any mmap-based reader (llama.cpp included) can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.display().to_string(), Bytes::Mmap(map))
    }

    /// Parse a GGUF held in memory (wasm, tests, bytes received over the network).
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Bytes::Owned(bytes))
    }

    /// Runs every check of the reader on `bytes` without keeping anything (fuzzing, validation).
    pub fn validate(name: &str, bytes: &[u8]) -> Result<()> {
        Reader { buf: bytes, pos: 0, file: name, version: 0 }.read_all().map(|_| ())
    }

    pub fn parse(name: String, bytes: Bytes) -> Result<Self> {
        let parsed = {
            let mut r = Reader { buf: &bytes, pos: 0, file: &name, version: 0 };
            r.read_all()?
        };
        let (version, metadata, tensors, alignment, data_offset) = parsed;
        let meta_index = metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Gguf(Arc::new(Inner {
            name,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
            bytes,
        })))
    }

    /// The file name used in error messages.
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn version(&self) -> u32 {
        self.0.version
    }
    pub fn alignment(&self) -> u64 {
        self.0.alignment
    }
    pub fn data_offset(&self) -> u64 {
        self.0.data_offset
    }
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.0.metadata
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.0.tensors
    }
    pub fn file_len(&self) -> u64 {
        self.0.bytes.len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.meta_index.get(key).map(|&i| &self.0.metadata[i].1)
    }

    fn meta_err(&self, key: &str, what: impl Into<String>) -> Error {
        Error::Metadata { file: self.0.name.clone(), key: key.to_string(), what: what.into() }
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.meta_err(key, "missing"))
    }

    /// A required unsigned integer (any stored integer width).
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.meta_err(key, format!("expected an unsigned integer, found {v}")))
    }

    /// A required unsigned integer that must fit `usize` and be at most `max` (guards allocations
    /// sized by hyper-parameters).
    pub fn usize_max(&self, key: &str, max: u64) -> Result<usize> {
        let v = self.u64(key)?;
        if v > max {
            return Err(self.meta_err(key, format!("{v} exceeds the limit {max}")));
        }
        Ok(v as usize)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.u64(key).map(Some),
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64().map(|x| x as f32).ok_or_else(|| self.meta_err(key, format!("expected a number, found {v}")))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.f32(key).map(Some),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.meta_err(key, format!("expected a string, found {v}")))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.str(key).map(Some),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.meta_err(key, format!("expected a bool, found {v}"))),
        }
    }

    pub fn array(&self, key: &str) -> Result<&Array> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.meta_err(key, format!("expected an array, found {v}")))
    }

    pub fn str_array(&self, key: &str) -> Result<&[String]> {
        let a = self.array(key)?;
        a.as_strings().ok_or_else(|| {
            self.meta_err(key, format!("expected an array of strings, found {:?} elements", a.elem_type()))
        })
    }

    /// A numeric array as f64 values.
    pub fn f64_array(&self, key: &str) -> Result<Vec<f64>> {
        let a = self.array(key)?;
        a.to_f64()
            .ok_or_else(|| self.meta_err(key, format!("expected a numeric array, found {:?} elements", a.elem_type())))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.0.tensor_index.get(name).map(|&i| &self.0.tensors[i])
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| Error::Tensor {
            file: self.0.name.clone(),
            tensor: name.to_string(),
            what: "missing".into(),
        })
    }

    /// The raw (possibly quantized) bytes of a tensor. Bounds were checked when the file was parsed;
    /// `info` must come from this file's [`Gguf::tensors`].
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.0.data_offset + info.offset) as usize;
        &self.0.bytes[start..start + info.n_bytes as usize]
    }

    /// A tensor dequantized to f32, in storage order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        if !info.ty.can_dequantize() {
            return Err(Error::Tensor {
                file: self.0.name.clone(),
                tensor: name.to_string(),
                what: format!("type {} cannot be dequantized by vigil", info.ty),
            });
        }
        let mut out = vec![0f32; info.n_elements() as usize];
        super::codec::dequantize(info.ty, self.tensor_bytes(info), &mut out).map_err(|e| Error::Tensor {
            file: self.0.name.clone(),
            tensor: name.to_string(),
            what: e.to_string(),
        })?;
        Ok(out)
    }
}

/// Result of a full parse: version, metadata, tensor infos, alignment, data offset.
type Parsed = (u32, Vec<(String, Value)>, Vec<TensorInfo>, u64, u64);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
    version: u32,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl Into<String>) -> Error {
        Error::Gguf { file: self.file.to_string(), offset: self.pos as u64, what: what.into() }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if (n as u64) > self.remaining() {
            return Err(self.err(format!("truncated: {what} needs {n} bytes, {} left", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    /// A length or count: u32 in GGUF v1, u64 from v2 on.
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.version == 1 {
            self.u32(what).map(u64::from)
        } else {
            self.u64(what)
        }
    }

    fn len_width(&self) -> u64 {
        if self.version == 1 {
            4
        } else {
            8
        }
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<usize> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(count as usize),
            _ => {
                Err(self
                    .err(format!("{what} count {count} cannot fit in the {} bytes left in the file", self.remaining())))
            }
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let n = self.len(what)?;
        let n = self.check_count(n, 1, &format!("{what} length"))?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Gguf {
            file: self.file.to_string(),
            offset: start as u64,
            what: format!("{what} is not valid UTF-8"),
        })
    }

    fn value(&mut self, ty: ValueType) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8("u8 value")?),
            ValueType::I8 => Value::I8(self.u8("i8 value")? as i8),
            ValueType::U16 => Value::U16(self.u16("u16 value")?),
            ValueType::I16 => Value::I16(self.u16("i16 value")? as i16),
            ValueType::U32 => Value::U32(self.u32("u32 value")?),
            ValueType::I32 => Value::I32(self.u32("i32 value")? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32("f32 value")?)),
            ValueType::U64 => Value::U64(self.u64("u64 value")?),
            ValueType::I64 => Value::I64(self.u64("i64 value")? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64("f64 value")?)),
            ValueType::Bool => match self.u8("bool value")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    self.pos -= 1;
                    return Err(self.err(format!("bool value {b} is neither 0 nor 1")));
                }
            },
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => Value::Array(self.array(0)?),
        })
    }

    /// An array (element type, count, elements). `count` is bounded by the bytes left before
    /// anything is allocated, and numeric elements are stored unboxed.
    fn array(&mut self, depth: u32) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err("arrays nested too deeply"));
        }
        let elem_id = self.u32("array element type")?;
        let Some(elem) = ValueType::from_id(elem_id) else {
            self.pos -= 4;
            return Err(self.err(format!("unknown array element type {elem_id}")));
        };
        let count = self.len("array length")?;
        let n = self.check_count(count, elem.min_size(self.len_width()), "array element")?;
        macro_rules! fixed {
            ($variant:ident, $t:ty, $w:expr) => {{
                let bytes = self.take(n * $w, "array elements")?;
                Array::$variant(bytes.chunks_exact($w).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
            }};
        }
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(n, "array elements")?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n, "array elements")?.iter().map(|&b| b as i8).collect()),
            ValueType::U16 => fixed!(U16, u16, 2),
            ValueType::I16 => fixed!(I16, i16, 2),
            ValueType::U32 => fixed!(U32, u32, 4),
            ValueType::I32 => fixed!(I32, i32, 4),
            ValueType::F32 => fixed!(F32, f32, 4),
            ValueType::U64 => fixed!(U64, u64, 8),
            ValueType::I64 => fixed!(I64, i64, 8),
            ValueType::F64 => fixed!(F64, f64, 8),
            ValueType::Bool => {
                let start = self.pos;
                let bytes = self.take(n, "array elements")?;
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    self.pos = start + i;
                    return Err(self.err(format!("bool array element {i} is {} (neither 0 nor 1)", bytes[i])));
                }
                Array::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n.min(INITIAL_CAP));
                for _ in 0..n {
                    v.push(self.string("array string")?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n.min(INITIAL_CAP));
                for _ in 0..n {
                    v.push(self.array(depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    fn read_all(&mut self) -> Result<Parsed> {
        let magic = self.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            self.pos = 0;
            return Err(self.err(format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")));
        }
        let version = self.u32("version")?;
        if !(1..=3).contains(&version) {
            self.pos -= 4;
            return Err(self.err(format!("unsupported GGUF version {version} (vigil reads 1–3)")));
        }
        self.version = version;
        let n_tensors = self.len("tensor count")?;
        let n_kv = self.len("metadata count")?;
        // A key/value takes at least a key length, a type id and one byte; a tensor info at least a
        // name length, n_dims, one dim, a type and an offset.
        let lw = self.len_width();
        let n_kv = self.check_count(n_kv, lw + 4 + 1, "metadata")?;
        let n_tensors = self.check_count(n_tensors, lw + 4 + lw + 4 + 8, "tensor")?;

        // Initial capacities are capped: growth beyond them is paid for by bytes actually parsed.
        let mut metadata = Vec::with_capacity(n_kv.min(INITIAL_CAP));
        let mut seen = HashMap::with_capacity(n_kv.min(INITIAL_CAP));
        for _ in 0..n_kv {
            let at = self.pos;
            let key = self.string("metadata key")?;
            let ty_id = self.u32("metadata value type")?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| {
                self.pos -= 4;
                self.err(format!("metadata `{key}` has unknown value type {ty_id}"))
            })?;
            let value = self.value(ty)?;
            if seen.insert(key.clone(), ()).is_some() {
                self.pos = at;
                return Err(self.err(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v {
                Value::U32(a) if *a > 0 && a.is_power_of_two() => *a as u64,
                other => return Err(self.err(format!("general.alignment must be a power-of-two u32, found {other}"))),
            },
        };

        let mut infos = Vec::with_capacity(n_tensors.min(INITIAL_CAP));
        let mut names = HashMap::with_capacity(n_tensors.min(INITIAL_CAP));
        for _ in 0..n_tensors {
            let at = self.pos;
            let name = self.string("tensor name")?;
            let n_dims = self.u32("tensor n_dims")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(self.err(format!("tensor `{name}` has {n_dims} dimensions (1–{MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = self.len("tensor dimension")?;
                if d == 0 {
                    return Err(self.err(format!("tensor `{name}` has a zero dimension")));
                }
                dims.push(d);
            }
            let ty_id = self.u32("tensor type")?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| self.err(format!("tensor `{name}` has unknown ggml type {ty_id}")))?;
            let offset = self.u64("tensor offset")?;
            let n_el = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| self.err(format!("tensor `{name}` dimensions {dims:?} overflow")))?;
            if dims[0] % ty.block_size() as u64 != 0 {
                return Err(self.err(format!(
                    "tensor `{name}` row length {} is not a multiple of the {ty} block size {}",
                    dims[0],
                    ty.block_size()
                )));
            }
            let n_bytes = ty.byte_size(n_el).ok_or_else(|| self.err(format!("tensor `{name}` byte size overflows")))?;
            if offset % alignment != 0 {
                return Err(self.err(format!("tensor `{name}` offset {offset} is not aligned to {alignment}")));
            }
            if names.insert(name.clone(), ()).is_some() {
                self.pos = at;
                return Err(self.err(format!("duplicate tensor name `{name}`")));
            }
            infos.push(TensorInfo { name, dims, ty, offset, n_bytes });
        }

        let data_offset = (self.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (self.buf.len() as u64).saturating_sub(data_offset);
        if n_tensors > 0 && data_offset > self.buf.len() as u64 {
            return Err(self.err("truncated: the file ends before its data section"));
        }
        // Every tensor inside the data section, none overlapping.
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(infos.len());
        for (i, t) in infos.iter().enumerate() {
            let end = t.offset.checked_add(t.n_bytes).filter(|&e| e <= data_len).ok_or_else(|| Error::Gguf {
                file: self.file.to_string(),
                offset: data_offset.saturating_add(t.offset),
                what: format!(
                    "tensor `{}` ({} bytes at data offset {}) runs past the end of the file ({} data bytes)",
                    t.name, t.n_bytes, t.offset, data_len
                ),
            })?;
            spans.push((t.offset, end, i));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::Gguf {
                    file: self.file.to_string(),
                    offset: data_offset.saturating_add(w[1].0),
                    what: format!("tensors `{}` and `{}` overlap", infos[w[0].2].name, infos[w[1].2].name),
                });
            }
        }
        Ok((version, metadata, infos, alignment, data_offset))
    }
}
