//! Multi-head attention, and the steering interface of the UNet's cross-attention layers.
//!
//! Personalization methods steer cross-attention in three ways, all through [`AttentionControl`]:
//! a different condition per layer or separate key/value conditions (SeFi-IDE's K/V tokens), capturing the
//! attention probabilities of chosen layers with their graph kept (SeFi-IDE's attention loss, heat maps), and
//! transforming the condition before a layer uses it (adapters), and replacing a layer's projected keys and
//! values (low-rank weight deltas on `to_k`/`to_v`, ID-EA's `--train-cross-attn-kv`). Plain generation passes
//! no control and pays nothing for it.

use std::fmt;

use candle_core::{Module, Tensor};

use super::grad::{matmul, softmax_last_dim};
use super::layers::Linear;
use super::sdpa::sdpa;
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
        Self {
            key: condition,
            value: None,
        }
    }

    pub fn split(key: Tensor, value: Tensor) -> Self {
        Self {
            key,
            value: Some(value),
        }
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
        write!(
            f,
            "{} ({}×{})",
            self.name, self.resolution.0, self.resolution.1
        )
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
    /// A reference key condition `[B, L, d_cond]` for a layer whose probabilities are captured: the layer's
    /// (detached) queries are also scored against `to_k(reference)` and the probabilities handed to
    /// `capture_reference`, without a graph. SeFi-IDE's subject-wise loss compares a pseudo-token's map with
    /// the class word's map of a reference prompt *for the same queries*, which only the layer can compute.
    fn reference(&self, _layer: &LayerId) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Receives the reference probabilities `[B, heads, queries, L]` of a layer for which `reference` gave one.
    fn capture_reference(&self, _layer: &LayerId, _probs: &Tensor) -> Result<()> {
        Ok(())
    }
    /// Replacement keys and values `[B, L, inner]` for this layer, given the ones its frozen `to_k`/`to_v`
    /// projected from `condition` (e.g. `k + c·Aᵀ·Bᵀ`, a low-rank delta on the weight, which no transform of
    /// the condition can express). `None` keeps them.
    fn key_value(
        &self,
        _layer: &LayerId,
        _condition: &Condition,
        _key: &Tensor,
        _value: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
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
    pub fn load(
        w: &Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
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
        let (k, v) = match control {
            Some((c, layer)) => match c.key_value(layer, condition, &k, &v)? {
                // A method's deltas may be f32 while the model computes in half precision.
                Some((k2, v2)) => (k2.to_dtype(q.dtype())?, v2.to_dtype(q.dtype())?),
                None => (k, v),
            },
            None => (k, v),
        };
        let capture = control.filter(|(c, layer)| c.wants_probs(layer));
        if let Some((c, layer)) = capture {
            if let Some(reference) = c.reference(layer)? {
                let k_ref = self.to_k.forward(&reference.detach())?;
                c.capture_reference(
                    layer,
                    &probabilities(&q.detach(), &k_ref, self.heads, self.scale)?,
                )?;
            }
        }
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
    let out = match capture {
        Some((control, layer)) => {
            let probs = probabilities(q, k, heads, scale)?;
            control.capture(layer, &probs)?;
            matmul(&probs, &split_heads(v, heads)?)?
        }
        None => {
            let flat = |t: &Tensor| -> candle_core::Result<Tensor> {
                let (b, l, inner) = t.dims3()?;
                split_heads(t, heads)?.reshape((b * heads, l, inner / heads))
            };
            sdpa(&flat(&(q * scale)?)?, &flat(k)?, &flat(v)?)?.reshape((
                b,
                heads,
                n,
                inner / heads,
            ))?
        }
    };
    Ok(out.transpose(1, 2)?.reshape((b, n, inner))?)
}

/// `softmax(q kᵀ · scale)` per head: q `[B, N, H·d]`, k `[B, L, H·d]` → `[B, H, N, L]`.
fn probabilities(q: &Tensor, k: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (q, k) = (split_heads(&(q * scale)?, heads)?, split_heads(k, heads)?);
    Ok(softmax_last_dim(&matmul(&q, &k.t()?)?)?)
}

/// `[B, L, H·d]` → `[B, H, L, d]`.
fn split_heads(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, l, inner) = t.dims3()?;
    t.reshape((b, l, heads, inner / heads))?
        .transpose(1, 2)?
        .contiguous()
}
