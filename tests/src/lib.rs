//! Shared helpers for vigil cross-crate tests.
