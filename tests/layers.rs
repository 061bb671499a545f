//! The crate's layers only look down: no module names a module in a layer above its own, and
//! the operations do not borrow from each other. Run with `cargo test --test layers`; a
//! failure lists each offending line.
//!
//! | layer | modules                                                           |
//! |-------|-------------------------------------------------------------------|
//! | 0     | error, units, control, read_at, sys, zero, output, sink (helpers)  |
//! | 1     | archive                                                           |
//! | 2     | input                                                             |
//! | 3     | pipeline                                                          |
//! | 4     | convert, extract, info, verify (the operations)                   |
//! | 4     | export (the operation writing other disk formats)                 |
//! | 5     | library, batch                                                    |
//! | 6     | the binary: main.rs, cli/                                         |
//!
//! A module may use its own layer's modules only in layer 0; `fuzz_targets` (test entry points
//! for every parser) is exempt.

use std::path::{Path, PathBuf};

fn layer_of(module: &str) -> Option<u8> {
    Some(match module {
        "error" | "units" | "control" | "read_at" | "sys" | "zero" | "output" | "sink" => 0,
        "archive" => 1,
        "input" => 2,
        "pipeline" => 3,
        "convert" | "extract" | "info" | "verify" => 4,
        "export" => 4,
        "library" | "batch" => 5,
        "cli" | "main" => 6,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/input/qcow2/header.rs` -> `input`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every top-level module a line names through `crate::` (or, in the binary, `imgpack::`),
/// including inside `use crate::{a, b::c}` groups.
fn modules_named(line: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "fuzz_targets" {
            continue;
        }
        let layer = layer_of(&module)
            .unwrap_or_else(|| panic!("{}: module {module} has no layer; add it here", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for prefix in ["crate::", "imgpack::"] {
                for named in modules_named(code, prefix) {
                    let Some(named_layer) = layer_of(&named) else {
                        continue; // a re-export at the crate root (`crate::Result`)
                    };
                    checked += 1;
                    let upward = named_layer > layer;
                    let sideways = named_layer == layer && layer > 0 && named != module;
                    if upward || sideways {
                        violations.push(format!(
                            "{}:{}: {module} (layer {layer}) uses {named} (layer {named_layer}): {}",
                            file.strip_prefix(&src).unwrap().display(),
                            number + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} module references found: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "imports that run up or across a layer:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_finds_grouped_and_inline_paths() {
    assert_eq!(
        modules_named("use crate::{convert, input::detect};", "crate::"),
        ["convert", "input"]
    );
    assert_eq!(
        modules_named(
            "let x = crate::info::measure(crate::zero::is_zero(b));",
            "crate::"
        ),
        ["info", "zero"]
    );
    assert!(modules_named("use super::Format;", "crate::").is_empty());
}
