//! Evaluation of personalized generation (the Celeb Basis protocol), see `docs/evaluation.md`.
//!
//! `clip`: the CLIP prompt score. `prompts`: prompt sets and placeholders. `score`: faces, ID similarity and
//! prompt score of images. `protocol`: one method × identity × prompt unit (generate, score, resume).
//! `stats` / `results`: means with bootstrap intervals, `results.json` / `.csv`. `eval`: `persona eval`.
//! `compare`: manifests, shards, merge. `report`: `report.html` with the scatter plot.

pub mod clip;
pub mod compare;
pub mod error;
pub mod eval;
pub mod prompts;
pub mod protocol;
pub mod report;
pub mod results;
pub mod score;
pub mod stats;

pub use error::{Error, Result};
