//! Evaluation of personalized generation (the Celeb Basis protocol).
//!
//! `clip`: the CLIP prompt score (ViT image tower, text tower, projections and CLIPImageProcessor's preprocessing).

pub mod clip;
