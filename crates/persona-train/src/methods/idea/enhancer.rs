//! The ID-Enhancer: fuses the person's face-recognition embedding with the Cross Init textual anchor into the
//! identity-enhanced embedding `fused [n, 2d]` the ID-Adapter reads.
//!
//! `q = W_q(W_a a)` (one query per pseudo-token, all equal), `kv = W_kv · init`, `o = MHA(q, kv, kv)`,
//! `fused = W_o · o` (shared/spec/methods.md, "ID-Enhancer"). Trained, unlike the released code where it stays
//! at its random initialisation.

use candle_core::Tensor;

use crate::Result;
use persona_identity::layers::{Linear, MultiheadAttention, Source};

#[derive(Clone, Debug)]
pub struct Enhancer {
    /// W_a: face-embedding width → d.
    face_proj: Linear,
    /// W_q: d → d.
    to_q: Linear,
    /// W_kv: d → d, applied to the anchor.
    to_kv: Linear,
    attn: MultiheadAttention,
    /// W_o: d → 2d.
    to_out: Linear,
}

impl Enhancer {
    /// Parameters under `enhancer.` (`face_proj`, `to_q`, `to_kv`, `attn`, `to_out`).
    pub fn new(src: &mut Source, face_dim: usize, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            face_proj: Linear::new(src, "enhancer.face_proj", face_dim, dim)?,
            to_q: Linear::new(src, "enhancer.to_q", dim, dim)?,
            to_kv: Linear::new(src, "enhancer.to_kv", dim, dim)?,
            attn: MultiheadAttention::new(src, "enhancer.attn", dim, heads)?,
            to_out: Linear::new(src, "enhancer.to_out", dim, 2 * dim)?,
        })
    }

    /// `face [f]` (L2-normalised) and the anchor `init [n, d]` (constant) → `fused [n, 2d]`.
    pub fn forward(&self, face: &Tensor, init: &Tensor) -> Result<Tensor> {
        let (n, d) = init.dims2()?;
        let q = self
            .to_q
            .forward(&self.face_proj.forward(&face.unsqueeze(0)?)?)?;
        let q = q.unsqueeze(0)?.broadcast_as((1, n, d))?.contiguous()?;
        let kv = self.to_kv.forward(&init.unsqueeze(0)?)?;
        let o = self.attn.forward(&q, &kv)?;
        Ok(self.to_out.forward(&o)?.squeeze(0)?)
    }
}
