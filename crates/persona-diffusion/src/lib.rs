//! Stable Diffusion on candle.
