//! The trainable layers ID-EA adds: a linear layer and PyTorch's `nn.MultiheadAttention`, with PyTorch's
//! parameter names and default initialisation.
//!
//! Unlike the frozen-model layers of `persona_diffusion::nn`, every parameter here is trained, so the ops are
//! plain differentiable candle ops (gradients for every operand). The layers hold plain tensors: during
//! training they are the `Var`s' tensors (tracked, updated in place by the optimizer), at inference tensors
//! read from the identity file (untracked, so the frozen UNet keeps its fast no-graph path).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use persona_diffusion::nn::attend;
use rand::{Rng, SeedableRng};

use crate::{IdentityError as Error, Result};

/// Named trainable tensors, in a fixed order (optimizer state and checkpoints are keyed by these names).
pub type Named = Vec<(String, Var)>;

/// Where parameters come from: fresh (seeded PyTorch-style init, recorded as `Var`s) or a saved set.
pub enum Source<'a> {
    Init {
        seed: u64,
        dtype: DType,
        device: &'a Device,
        vars: &'a mut Named,
    },
    Saved(&'a BTreeMap<String, Tensor>),
}

/// How a fresh parameter is initialised (PyTorch's defaults for the layer it belongs to).
#[derive(Clone, Copy)]
enum Init {
    Uniform(f64),
    Zeros,
}

impl Source<'_> {
    fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match self {
            Source::Init {
                seed,
                dtype,
                device,
                vars,
            } => {
                let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                });
                let mut rng = rand::rngs::StdRng::seed_from_u64(*seed ^ hash);
                let n: usize = shape.iter().product();
                let values: Vec<f32> = match init {
                    Init::Uniform(bound) => (0..n)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect(),
                    Init::Zeros => vec![0.0; n],
                };
                let t = Tensor::from_vec(values, shape, device)?.to_dtype(*dtype)?;
                let var = Var::from_tensor(&t)?;
                let tensor = var.as_tensor().clone();
                vars.push((name.to_string(), var));
                Ok(tensor)
            }
            Source::Saved(tensors) => {
                let t = tensors
                    .get(name)
                    .ok_or_else(|| Error::Invalid(format!("missing tensor {name}")))?;
                if t.dims() != shape {
                    return Err(Error::Invalid(format!(
                        "tensor {name} has shape {:?}, expected {shape:?}",
                        t.dims()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?)
            }
        }
    }

    /// Creates a zero-initialised parameter or reads a saved one (LoRA up-projections, γ).
    pub fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape, Init::Zeros)
    }

    /// Creates a parameter uniform in ±`bound`, or reads a saved one.
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<Tensor> {
        self.get(name, shape, Init::Uniform(bound))
    }
}

/// `nn.Linear(in, out)`: `y = x Wᵀ + b`, initialised U(±1/√in) for both W and b.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(src: &mut Source, name: &str, input: usize, output: usize) -> Result<Self> {
        let bound = 1.0 / (input as f64).sqrt();
        Ok(Self {
            weight: src.uniform(&format!("{name}.weight"), &[output, input], bound)?,
            bias: src.uniform(&format!("{name}.bias"), &[output], bound)?,
        })
    }

    /// On the last dimension of `x` (any rank ≥ 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        affine(x, &self.weight, &self.bias)
    }
}

/// `x Wᵀ + b` over the last dimension, differentiable in all three.
fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let input = *dims
        .last()
        .ok_or_else(|| Error::Invalid("linear layer on a scalar".into()))?;
    let rows = x.elem_count() / input.max(1);
    let y = x
        .reshape((rows, input))?
        .matmul(&w.t()?)?
        .broadcast_add(b)?;
    let mut out = dims;
    *out.last_mut().expect("rank ≥ 1") = w.dim(0)?;
    Ok(y.reshape(out)?)
}

/// `nn.MultiheadAttention(d, heads)` (bias on, no dropout, batch first): packed q/k/v input projection
/// (`in_proj_weight [3d, d]`, xavier-uniform; `in_proj_bias` zeros), scaled dot-product attention per head,
/// output projection (`out_proj`, weight U(±1/√d), bias zeros).
#[derive(Clone, Debug)]
pub struct MultiheadAttention {
    in_weight: Tensor,
    in_bias: Tensor,
    out_weight: Tensor,
    out_bias: Tensor,
    heads: usize,
    dim: usize,
}

impl MultiheadAttention {
    pub fn new(src: &mut Source, name: &str, dim: usize, heads: usize) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::Invalid(format!(
                "{heads} attention heads do not divide the width {dim}"
            )));
        }
        let xavier = (6.0 / (4 * dim) as f64).sqrt();
        Ok(Self {
            in_weight: src.uniform(&format!("{name}.in_proj_weight"), &[3 * dim, dim], xavier)?,
            in_bias: src.zeros(&format!("{name}.in_proj_bias"), &[3 * dim])?,
            out_weight: src.uniform(
                &format!("{name}.out_proj.weight"),
                &[dim, dim],
                1.0 / (dim as f64).sqrt(),
            )?,
            out_bias: src.zeros(&format!("{name}.out_proj.bias"), &[dim])?,
            heads,
            dim,
        })
    }

    /// Attention of `query` `[B, Lq, d]` to `key_value` `[B, Lk, d]` (keys and values from the same tensor).
    pub fn forward(&self, query: &Tensor, key_value: &Tensor) -> Result<Tensor> {
        let d = self.dim;
        let part = |i: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                self.in_weight.narrow(0, i * d, d)?,
                self.in_bias.narrow(0, i * d, d)?,
            ))
        };
        let ((wq, bq), (wk, bk), (wv, bv)) = (part(0)?, part(1)?, part(2)?);
        let q = affine(query, &wq, &bq)?;
        let k = affine(key_value, &wk, &bk)?;
        let v = affine(key_value, &wv, &bv)?;
        let scale = ((d / self.heads) as f64).powf(-0.5);
        let out = attend(&q, &k, &v, self.heads, scale, None)?;
        affine(&out, &self.out_weight, &self.out_bias)
    }
}
