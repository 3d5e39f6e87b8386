//! Shared test helpers: where the models, photos and fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project root (two levels above this crate).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `fixtures/faces/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures/faces").join(rel)
}

/// `../shared/<rel>` beside the project root, or `None` (with a message) when absent.
/// Under `CI=true` a missing folder is a failure: CI must run these tests, not skip them.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = root().join("../shared").join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing; CI must provide ../shared beside the clone",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found (models/photos live in ../shared beside the project)",
        p.display()
    );
    None
}

/// The shared models folder.
pub fn models() -> Option<PathBuf> {
    shared("models")
}

/// All test photos of the shared identity set: (key as in reference/mtcnn.json, path).
pub fn identity_photos() -> Option<Vec<(String, PathBuf)>> {
    let base = shared("data/faces")?;
    let mut out = Vec::new();
    for set in ["celeba", "stylegan3"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(base.join(set))
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", base.join(set).display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        files.sort();
        for f in files {
            out.push((
                format!("shared/{set}/{}", f.file_name().unwrap().to_str().unwrap()),
                f,
            ));
        }
    }
    Some(out)
}

/// A unique scratch folder for this test binary.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("persona-faces-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
