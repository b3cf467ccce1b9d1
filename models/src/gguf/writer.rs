//! GGUF v3 writer: metadata, tensor infos, aligned data. Output is read by vigil's reader, by the
//! Python `gguf` package and by llama.cpp.

use std::io::Write;

use super::reader::DEFAULT_ALIGNMENT;
use super::types::GgmlType;
use super::value::{Array, Value};
use crate::error::{Error, Result};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes one GGUF v3 file.
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { metadata: Vec::new(), tensors: Vec::new(), alignment: DEFAULT_ALIGNMENT }
    }

    /// Sets (or replaces) a metadata key. `general.alignment` also changes the data alignment.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        if key == "general.alignment" {
            if let Value::U32(a) = value {
                if a > 0 && a.is_power_of_two() {
                    self.alignment = a as u64;
                }
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Removes a metadata key (no-op when absent).
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// Adds a tensor. `dims[0]` is the innermost dimension (ggml order); `data` must hold exactly
    /// the bytes of that many elements in `ty`.
    pub fn add_tensor(&mut self, name: impl Into<String>, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Result<()> {
        let name = name.into();
        let bad = |what: String| Error::Tensor { file: "<gguf writer>".into(), tensor: name.clone(), what };
        if dims.is_empty() || dims.len() > super::reader::MAX_DIMS || dims.contains(&0) {
            return Err(bad(format!("dims {dims:?} must be 1–4 non-zero values")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        let n: u64 = dims.iter().product();
        match ty.byte_size(n) {
            Some(b) if b == data.len() as u64 && dims[0].is_multiple_of(ty.block_size() as u64) => {}
            _ => return Err(bad(format!("{} bytes do not hold {dims:?} elements of {ty}", data.len()))),
        }
        self.tensors.push(PendingTensor { name, dims: dims.to_vec(), ty, data });
        Ok(())
    }

    /// Quantizes f32 values into `ty` and adds them.
    pub fn add_f32(&mut self, name: impl Into<String>, dims: &[u64], ty: GgmlType, values: &[f32]) -> Result<()> {
        let data = super::codec::quantize(ty, values)?;
        self.add_tensor(name, dims, ty, data)
    }

    pub fn write(&self, mut w: impl Write) -> std::io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(super::reader::GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            write_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        pad(&mut head, self.alignment);
        w.write_all(&head)?;
        let mut written = 0u64;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            written += t.data.len() as u64;
            let padded = written.div_ceil(self.alignment) * self.alignment;
            w.write_all(&vec![0u8; (padded - written) as usize])?;
            written = padded;
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Writes the file atomically (temporary file in the same folder, then rename).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::fsutil::write_atomic(path.as_ref(), |f| {
            let mut w = std::io::BufWriter::new(f);
            self.write(&mut w)?;
            w.flush()
        })
    }
}

fn pad(buf: &mut Vec<u8>, alignment: u64) {
    let len = buf.len() as u64;
    let target = len.div_ceil(alignment) * alignment;
    buf.resize(target as usize, 0);
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn write_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => write_str(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => write_array(buf, a),
    }
}

fn write_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            $v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::Bool(v) => v.iter().for_each(|&b| buf.push(b as u8)),
        Array::String(v) => v.iter().for_each(|s| write_str(buf, s)),
        Array::Array(v) => v.iter().for_each(|x| write_array(buf, x)),
    }
}
