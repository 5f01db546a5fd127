//! The fuzz harnesses. They live in [`harness`] so that `tests/fuzz_regressions.rs` in the main
//! package replays the seed corpora and saved crashes through exactly the same code.
pub mod harness;
