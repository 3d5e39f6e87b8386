//! Stable Diffusion on candle, numerically equal to diffusers.
//!
//! The modules follow the data flow: building blocks (`nn`) → models
//! (`models`: text encoder, UNet, VAE) → pipeline pieces (`tokenizer`,
//! `schedulers`, `loading`) → sampling (`pipeline`).

pub mod allocator;
pub mod device;
pub mod error;
pub mod loading;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod safetensors_file;
pub mod schedulers;
pub mod testing;
pub mod threads;
pub mod tokenizer;

pub use error::{Error, Result};
