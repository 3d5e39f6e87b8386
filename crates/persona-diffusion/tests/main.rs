//! All integration tests of this crate in one binary: one link of candle/tract instead of one per file,
//! which keeps a cold CI build's disk use and link time small.

mod grad_ops;
mod gradients;
mod loading;
mod manifests;
mod mixed_precision;
mod models;
mod pipeline;
mod schedulers;
mod sdxl;
mod tokenizer;
