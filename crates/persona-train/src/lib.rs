//! Personalization of a frozen Stable Diffusion: the methods, the shared training loop, identity files.
//!
//! Data flow: `data` (photos → training tensors) and `captions` → `methods` (what is learned and how the
//! condition is built) → `trainer` (the loop: noising, loss, AdamW, checkpoints) → `output` (the identity file, whose
//! format lives in `persona-identity`); `recipe` wires them
//! together for one identity, as `persona train` and `persona compare` run it.

pub mod captions;
pub mod checkpoint;
pub mod data;
mod error;
pub mod methods;
pub mod optim;
pub mod output;
pub mod probe;
pub mod recipe;
pub mod trainer;

pub use error::{Error, Result};
