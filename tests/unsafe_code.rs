//! Where the crate's `unsafe` code is, as its module docs say (`src/handoff/windows.rs` and
//! `src/handoff/unix.rs`): a file that gains `unsafe` must say so in its own docs and be added
//! here, so that a reviewer knows where to look. (Read from the source tree, once: on Unix.)

#![cfg(unix)]

use std::path::{Path, PathBuf};

/// The files with `unsafe` code, each documenting why.
const ALLOWED: &[&str] = &[
    "src/handoff/unix.rs",
    "src/handoff/unix/reexec.rs",
    "src/handoff/unix/stderr.rs",
    "src/handoff/windows.rs",
    "src/handoff/windows/child.rs",
    "src/handoff/windows/pipe.rs",
    "src/handoff/windows/process.rs",
    "src/handoff/windows/security.rs",
    "src/handoff/windows/socket.rs",
    "src/handoff/windows/stderr.rs",
];

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// Whether a file has `unsafe` outside comments.
fn has_unsafe(text: &str) -> bool {
    text.lines().any(|line| {
        let code = line.split("//").next().unwrap_or_default();
        code.contains("unsafe {")
            || code.contains("unsafe fn")
            || code.contains("unsafe impl")
            || code.trim_end().ends_with("unsafe")
    })
}

#[test]
fn unsafe_code_is_only_where_the_docs_say() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found: Vec<String> = files
        .iter()
        .filter(|path| has_unsafe(&std::fs::read_to_string(path).expect("read")))
        .map(|path| {
            path.strip_prefix(root)
                .expect("under the crate")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    found.sort();
    let unexpected: Vec<&String> = found
        .iter()
        .filter(|f| !ALLOWED.contains(&f.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "unsafe code in {unexpected:?}");
    // Each side's docs own up to it, and neither claims to be the only one.
    for doc in ["src/handoff/unix.rs", "src/handoff/windows.rs"] {
        let text = std::fs::read_to_string(root.join(doc)).expect("read");
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            header.contains("`unsafe`"),
            "{doc} does not say it has unsafe code"
        );
        assert!(!header.contains("only module"), "{doc}: {header}");
    }
}
