//! Shared test helpers: where the models and photos are, and a headless-Chromium page check.
#![allow(dead_code)]

pub mod browser;

use std::path::{Path, PathBuf};

/// The project root (two levels above this crate).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Under `CI=true` a missing prerequisite is a failure (CI must run these tests); elsewhere a skip with a message.
pub fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing; CI must provide it");
    }
    eprintln!("SKIPPED: {what} not found");
}

/// `../shared/<rel>` beside the project root, canonical (see `persona_diffusion::testing::shared`).
pub fn shared(rel: &str) -> Option<PathBuf> {
    persona_diffusion::testing::shared(rel).map(|p| p.canonicalize().unwrap())
}

/// The shared photos of one set, sorted.
pub fn photos(set: &str) -> Option<Vec<PathBuf>> {
    let dir = shared(&format!("data/faces/{set}"))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    Some(files)
}

/// Copies `files` into a new folder `dir`.
pub fn folder_of(dir: &Path, files: &[&Path]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir.to_path_buf()
}
