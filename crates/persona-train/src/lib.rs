//! Personalization of a frozen Stable Diffusion: the methods, the shared training loop, identity files.

pub mod identity;
