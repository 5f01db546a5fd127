//! House rules checked inside `cargo test` (rust-analyzer's tidy): no ignored or should-panic
//! tests, no `mod.rs` files.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_ignored_or_should_panic_tests_and_no_mod_rs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "bench"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 10,
        "found only {} files: is the walk broken?",
        files.len()
    );
    // Built from pieces so this file does not trip its own check.
    let banned = [format!("#[{}", "ignore"), format!("#[{}", "should_panic")];
    let mut problems = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "mod.rs") {
            problems.push(format!("{}: use foo.rs + foo/ instead of mod.rs", f.display()));
        }
        let text = std::fs::read_to_string(f).unwrap();
        for b in &banned {
            if text.contains(b.as_str()) {
                problems.push(format!("{}: contains {b}]", f.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
