//! Multi-head attention, and the steering interface of the UNet's cross-attention layers.
//!
//! Personalization methods steer cross-attention in three ways, all through [`AttentionControl`]:
//! a different condition per layer or separate key/value conditions (SeFi-IDE's K/V tokens), capturing the
//! attention probabilities of chosen layers with their graph kept (SeFi-IDE's attention loss, heat maps), and
//! transforming the condition before a layer uses it (adapters). Plain generation passes no control and pays
//! nothing for it.

use std::fmt;

use candle_core::{Module, Tensor};

use super::grad::{matmul, softmax_last_dim};
use super::layers::Linear;
use super::weights::Weights;
use crate::Result;

/// What a cross-attention layer attends to: keys from `key`, values from `value` (the same condition unless a
/// method separates them). Both `[B, L, d_cond]`.
#[derive(Clone, Debug)]
pub struct Condition {
    pub key: Tensor,
    pub value: Option<Tensor>,
}

impl Condition {
    pub fn new(condition: Tensor) -> Self {
        Self { key: condition, value: None }
    }

    pub fn split(key: Tensor, value: Tensor) -> Self {
        Self { key, value: Some(value) }
    }

    pub fn value(&self) -> &Tensor {
        self.value.as_ref().unwrap_or(&self.key)
    }
}

/// Identifies one cross-attention layer of the UNet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerId {
    /// The diffusers module path, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2`.
    pub name: String,
    /// Height and width of the feature map whose pixels are the queries.
    pub resolution: (usize, usize),
    pub heads: usize,
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}×{})", self.name, self.resolution.0, self.resolution.1)
    }
}

/// A plug-in that steers the UNet's cross-attention layers. Every method has a default that changes nothing.
/// Methods take `&self`: implementations that collect captures use interior mutability.
pub trait AttentionControl {
    /// The condition this layer should read, given the one the UNet was called with. `None` keeps it.
    fn condition(&self, _layer: &LayerId, _condition: &Condition) -> Result<Option<Condition>> {
        Ok(None)
    }
    /// Whether the attention probabilities `[B, heads, queries, L]` of this layer should be handed to `capture`.
    fn wants_probs(&self, _layer: &LayerId) -> bool {
        false
    }
    /// Receives the probabilities of a layer for which `wants_probs` was true, still attached to the graph.
    fn capture(&self, _layer: &LayerId, _probs: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// diffusers' `Attention` with the default processor: separate q/k/v projections, softmax(q kᵀ/√d) v, output
/// projection (`to_out.0`).
#[derive(Clone, Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `context_dim` is the width of what keys and values are computed from (the query width for self-attention).
    pub fn load(w: &Weights, query_dim: usize, context_dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::load(&w.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(&w.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::load(&w.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::load(&w.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Self-attention over `x` `[B, N, C]`.
    pub fn forward_self(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(x)?;
        let v = self.to_v.forward(x)?;
        let out = attend(&q, &k, &v, self.heads, self.scale, None)?;
        Ok(self.to_out.forward(&out)?)
    }

    /// Cross-attention of `x` `[B, N, C]` to a condition, steered by `control` when given.
    pub fn forward_cross(
        &self,
        x: &Tensor,
        condition: &Condition,
        control: Option<(&dyn AttentionControl, &LayerId)>,
    ) -> Result<Tensor> {
        let replaced = match control {
            Some((c, layer)) => c.condition(layer, condition)?,
            None => None,
        };
        let condition = replaced.as_ref().unwrap_or(condition);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(&condition.key)?;
        let v = self.to_v.forward(condition.value())?;
        let capture = control.filter(|(c, layer)| c.wants_probs(layer));
        let out = attend(&q, &k, &v, self.heads, self.scale, capture)?;
        Ok(self.to_out.forward(&out)?)
    }
}

/// Scaled dot-product attention, heads split from the last dimension. q `[B, N, H·d]`, k and v `[B, L, H·d]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    capture: Option<(&dyn AttentionControl, &LayerId)>,
) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let d = inner / heads;
    let split = |t: &Tensor| -> candle_core::Result<Tensor> {
        let l = t.dim(1)?;
        t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(&(q * scale)?)?, split(k)?, split(v)?);
    let scores = matmul(&q, &k.t()?)?;
    let probs = softmax_last_dim(&scores)?;
    if let Some((control, layer)) = capture {
        control.capture(layer, &probs)?;
    }
    let out = matmul(&probs, &v)?;
    Ok(out.transpose(1, 2)?.reshape((b, n, inner))?)
}
