//! Cross-crate tests of vigil live in `tests/tests/`; this library is intentionally empty.
