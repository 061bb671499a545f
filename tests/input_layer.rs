//! The input layer is at the bottom: no file under `src/input/` may use a module above it (the
//! pipeline, the operations, the library, batch, the CLI, outputs). Readers return facts;
//! the operations turn them into reports.

use std::path::Path;

const ABOVE: [&str; 9] = [
    "crate::pipeline",
    "crate::convert",
    "crate::extract",
    "crate::info",
    "crate::verify",
    "crate::library",
    "crate::batch",
    "crate::cli",
    "crate::output",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn nothing_in_the_input_layer_uses_a_layer_above_it() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/input"),
        &mut files,
    );
    assert!(files.len() > 10, "src/input not found");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for module in ABOVE {
                if line.contains(module) {
                    found.push(format!("{}:{}: {line}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "imports running up a layer:\n{}",
        found.join("\n")
    );
}
