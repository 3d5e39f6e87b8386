//! Noise schedulers with diffusers semantics.
