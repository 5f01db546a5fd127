//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) and every saved fuzzer finding
//! (`fuzz/regressions/<target>/`) through the fuzz harnesses themselves (`fuzz/src/harness.rs`,
//! included below), so each `cargo test` checks the same entry points and invariants the fuzzers
//! do, without cargo-fuzz or a nightly feature. `scripts/fuzz` runs the fuzzers.

#![allow(clippy::unwrap_used)] // Test code: a failure here is a test failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/harness.rs"]
mod harness;

type Harness = fn(&[u8]);

const TARGETS: &[&str] = &[
    "sigv4_header",
    "sigv4_presigned",
    "sigv2",
    "aws_chunked",
    "unsigned_chunks",
    "addressing",
    "decide",
    "config",
    "xml_rewrite",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Replays `fuzz/corpus/<target>/*` (which must not be empty) and `fuzz/regressions/<target>/*`.
fn replay(target: &str, run: Harness) {
    let fuzz = fuzz_dir();
    let mut failures = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            assert_ne!(dir, "corpus", "fuzz/corpus/{target} is missing");
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        if dir == "corpus" {
            assert!(!files.is_empty(), "fuzz/corpus/{target} has no seeds");
        }
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", f.strip_prefix(&fuzz).unwrap_or(&f).display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} input(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_corpus_directory_names_a_target() {
    // A misspelt directory would never be replayed.
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(TARGETS.contains(&name.as_str()), "fuzz/{dir}/{name}: no such target");
            assert!(
                fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")).is_file(),
                "fuzz/{dir}/{name}: no fuzz/fuzz_targets/{name}.rs"
            );
        }
    }
}

#[test]
fn sigv4_header() {
    replay("sigv4_header", harness::sigv4_header);
}

#[test]
fn sigv4_presigned() {
    replay("sigv4_presigned", harness::sigv4_presigned);
}

#[test]
fn sigv2() {
    replay("sigv2", harness::sigv2);
}

#[test]
fn aws_chunked() {
    replay("aws_chunked", harness::aws_chunked);
}

#[test]
fn unsigned_chunks() {
    replay("unsigned_chunks", harness::unsigned_chunks);
}

#[test]
fn addressing() {
    replay("addressing", harness::addressing);
}

#[test]
fn decide() {
    replay("decide", harness::decide);
}

#[test]
fn config() {
    replay("config", harness::config);
}

#[test]
fn xml_rewrite() {
    replay("xml_rewrite", harness::xml_rewrite);
}
