//! vigil-runtime
