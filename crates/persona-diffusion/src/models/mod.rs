//! The networks of Stable Diffusion (and SDXL), each configured from its own `config.json`.

pub mod clip_text;
pub mod unet;
pub mod vae;

pub use clip_text::{ClipTextModel, ClipTextModelWithProjection};
pub use unet::{AddedCond, UNet2DConditionModel};
pub use vae::AutoencoderKL;
