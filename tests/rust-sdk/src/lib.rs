//! Holds nothing: the test is `tests/e2ee.rs` (a crate needs at least one target).
