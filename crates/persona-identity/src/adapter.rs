//! The ID-Adapter: gated self-attention over `[condition; identity tokens]` that adapts the text condition
//! every cross-attention layer of the UNet reads:
//! `e = W_e · fused`, `X = [y; e]`, `S = MHA(X, X, X)[:, :L]`, `y' = y + β·tanh(γ)·S`.
//!
//! γ starts at 0, so at the first step the adapter is the identity map and ID-EA starts exactly where Cross
//! Init does. Only the first L outputs are kept, so only those queries are computed (the same values).

use candle_core::Tensor;

use crate::layers::{Linear, MultiheadAttention, Source};
use crate::Result;

/// The official constant gate scale.
pub const BETA: f64 = 0.4;

#[derive(Clone, Debug)]
pub struct Adapter {
    /// W_e: 2d → d.
    proj: Linear,
    attn: MultiheadAttention,
    /// The gate γ, shape `[1]`.
    pub gamma: Tensor,
    pub beta: f64,
}

impl Adapter {
    /// Parameters under `adapter.` (`proj`, `attn`, `gamma`).
    pub fn new(src: &mut Source, dim: usize, heads: usize, beta: f64) -> Result<Self> {
        Ok(Self {
            proj: Linear::new(src, "adapter.proj", 2 * dim, dim)?,
            attn: MultiheadAttention::new(src, "adapter.attn", dim, heads)?,
            gamma: src.zeros("adapter.gamma", &[1])?,
            beta,
        })
    }

    /// Adapts the condition `y [B, L, d]` with the identity-enhanced embedding `fused [n, 2d]`.
    pub fn forward(&self, y: &Tensor, fused: &Tensor) -> Result<Tensor> {
        let (b, _, d) = y.dims3()?;
        let e = self.proj.forward(&fused.to_dtype(y.dtype())?)?;
        let n = e.dim(0)?;
        let x = Tensor::cat(
            &[
                y.clone(),
                e.unsqueeze(0)?.broadcast_as((b, n, d))?.contiguous()?,
            ],
            1,
        )?;
        let s = self.attn.forward(y, &x)?;
        let gate = (self.gamma.to_dtype(y.dtype())?.tanh()? * self.beta)?;
        Ok((y + s.broadcast_mul(&gate)?)?)
    }
}
