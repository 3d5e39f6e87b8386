//! The ProSpect-style parameterisation (`--sefi-param generator`): instead of 2·S free vectors per
//! pseudo-token, one small pre-norm transformer block maps the init embedding, plus a learned embedding of each
//! (stage, key/value) slot, to the 2·S vectors. The slots attend to each other, so what one stage learns is
//! shared with its neighbours. ProSpect's exact block is not published in the SeFi-IDE paper; this is the
//! reconstruction `docs/sefi.md` describes: one head, hidden width d, SiLU MLP of width d (SiLU, not GELU: candle's
//! `gelu_erf` backward is off by ~1e-6 relative in f64, which the finite-difference test catches; SiLU's is exact).
//!
//! `out = init + W_out · block(init + P)` with `W_out` zero at the start, so training starts exactly where the
//! direct parameterisation does (every vector = the init word's embedding). Every op is one candle's autograd
//! differentiates correctly (no fused kernel without backward: the layer norm is written out, the softmax is
//! [`softmax_last_dim`] from `nn::grad`).

use candle_core::{DType, Tensor, Var, D};
use persona_diffusion::nn::grad::softmax_last_dim;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::Result;

const PREFIX: &str = "stages.generator.";

pub struct Generator {
    /// `[n, d]`, the init word's embedding (constant).
    init: Tensor,
    stages: usize,
    vars: Vec<(String, Var)>,
}

/// Variable names in order, with their shapes as multiples of (slots, d).
fn layout(slots: usize, d: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("slots", vec![slots, 1, d]),
        ("norm1.weight", vec![d]),
        ("norm1.bias", vec![d]),
        ("qkv.weight", vec![d, 3 * d]),
        ("attn_out.weight", vec![d, d]),
        ("norm2.weight", vec![d]),
        ("norm2.bias", vec![d]),
        ("mlp_in.weight", vec![d, d]),
        ("mlp_in.bias", vec![d]),
        ("mlp_out.weight", vec![d, d]),
        ("out.weight", vec![d, d]),
    ]
}

impl Generator {
    /// A generator for `init` `[n, d]` and `stages` stages; random weights from `seed` (N(0, 0.02²); layer-norm
    /// scales 1, biases 0, the output projection 0).
    pub fn new(init: &Tensor, stages: usize, seed: u64) -> Result<Self> {
        let d = init.dim(1)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f64, 0.02).map_err(|e| crate::Error::Msg(e.to_string()))?;
        let vars = layout(2 * stages, d)
            .into_iter()
            .map(|(name, shape)| {
                let count: usize = shape.iter().product();
                let values: Vec<f64> = match name {
                    "norm1.weight" | "norm2.weight" => vec![1.0; count],
                    "out.weight" => vec![0.0; count],
                    n if n.ends_with(".bias") => vec![0.0; count],
                    _ => (0..count).map(|_| normal.sample(&mut rng)).collect(),
                };
                let t = Tensor::from_vec(values, shape, init.device())?.to_dtype(init.dtype())?;
                Ok((format!("{PREFIX}{name}"), Var::from_tensor(&t)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            init: init.detach(),
            stages,
            vars,
        })
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    fn var(&self, name: &str) -> &Tensor {
        let full = format!("{PREFIX}{name}");
        self.vars
            .iter()
            .find(|(n, _)| *n == full)
            .map(|(_, v)| v.as_tensor())
            .expect("every layout name is a var")
    }

    /// The per-stage keys and values, `[S, n, d]` each.
    pub fn forward(&self) -> Result<(Tensor, Tensor)> {
        let (n, d) = self.init.dims2()?;
        let slots = 2 * self.stages;
        // [n, 2S, d]: for each pseudo-token, a sequence over its slots.
        let x = self
            .init
            .unsqueeze(0)?
            .broadcast_add(self.var("slots"))?
            .transpose(0, 1)?
            .contiguous()?;
        let proj = |t: &Tensor, w: &str| t.broadcast_matmul(self.var(w));
        let h = layer_norm(&x, self.var("norm1.weight"), self.var("norm1.bias"))?;
        let qkv = proj(&h, "qkv.weight")?;
        let (q, k, v) = (
            qkv.narrow(D::Minus1, 0, d)?,
            qkv.narrow(D::Minus1, d, d)?,
            qkv.narrow(D::Minus1, 2 * d, d)?,
        );
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let x = (&x + proj(&softmax_last_dim(&scores)?.matmul(&v)?, "attn_out.weight")?)?;
        let h = layer_norm(&x, self.var("norm2.weight"), self.var("norm2.bias"))?;
        let h = proj(&h, "mlp_in.weight")?
            .broadcast_add(self.var("mlp_in.bias"))?
            .silu()?;
        let x = (&x + proj(&h, "mlp_out.weight")?)?;
        let out = self
            .init
            .unsqueeze(1)?
            .broadcast_add(&proj(&x, "out.weight")?)?; // [n, 2S, d]
        let out = out.transpose(0, 1)?; // [2S, n, d]
        debug_assert_eq!(out.dims(), [slots, n, d]);
        Ok((
            out.narrow(0, 0, self.stages)?.contiguous()?,
            out.narrow(0, self.stages, self.stages)?.contiguous()?,
        ))
    }
}

/// Layer norm over the last dimension (eps 1e-5) from differentiable primitives.
fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let x64 = x.to_dtype(DType::F64)?;
    let centered = x64.broadcast_sub(&x64.mean_keepdim(D::Minus1)?)?;
    let std = (centered.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?.sqrt()?;
    centered
        .broadcast_div(&std)?
        .to_dtype(x.dtype())?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}
