//! The one error type of `vigil-models`. Every variant names the file, key, tensor or line it is about.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A structural problem in a GGUF file: where it is and what is wrong.
    #[error("{file}: malformed GGUF at byte {offset}: {what}")]
    Gguf { file: String, offset: u64, what: String },

    #[error("{file}: metadata `{key}`: {what}")]
    Metadata { file: String, key: String, what: String },

    #[error("{file}: tensor `{tensor}`: {what}")]
    Tensor { file: String, tensor: String, what: String },

    #[error("{file}: unsupported architecture `{arch}` (vigil runs: {supported})")]
    UnsupportedArch { file: String, arch: String, supported: String },

    #[error("{file}: tokenizer: {what}")]
    Tokenizer { file: String, what: String },

    #[error("block codec {ty}: {what}")]
    Codec { ty: String, what: String },

    #[error("adapter {file}: {what}")]
    Adapter { file: String, what: String },

    #[error("input: {0}")]
    Input(String),

    /// The compute device failed (GPU lost, out of memory, validation error).
    #[error("device: {0}")]
    Device(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
