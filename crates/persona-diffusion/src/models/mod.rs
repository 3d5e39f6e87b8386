//! The three networks of Stable Diffusion, each configured from its own `config.json`.

pub mod clip_text;
pub mod unet;
pub mod vae;

pub use clip_text::ClipTextModel;
pub use unet::UNet2DConditionModel;
pub use vae::AutoencoderKL;
