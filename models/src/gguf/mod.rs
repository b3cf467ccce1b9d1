//! GGUF: the file format of the models and adapters vigil reads and writes.
//!
//! - [`reader`]: bounds-checked parsing of v1–v3 files (memory-mapped natively, bytes in wasm);
//! - [`writer`]: v3 files with aligned data, for adapters, merged models and test fixtures;
//! - [`types`] and [`codec`]: ggml tensor types and their block codecs.

pub mod codec;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use reader::{Bytes, Gguf, TensorInfo};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

impl Value {
    pub fn str_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Array(Array::String(items.into_iter().map(Into::into).collect()))
    }
    pub fn f32_array(items: impl IntoIterator<Item = f32>) -> Value {
        Value::Array(Array::F32(items.into_iter().collect()))
    }
    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> Value {
        Value::Array(Array::I32(items.into_iter().collect()))
    }
    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }
}
