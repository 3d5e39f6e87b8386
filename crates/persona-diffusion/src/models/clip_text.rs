//! CLIP text encoder (transformers' `CLIPTextModel`): SD 1.x ViT-L/14 (quick_gelu) and SD 2.x OpenCLIP ViT-H
//! (exact gelu). Runs from token ids or from input embeddings — personalization methods put learned vectors
//! into the embedding sequence and need gradients back to them.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};

use crate::nn::grad::{add, matmul};
use crate::nn::{read_json, Activation, LayerNorm, Linear, Weights};
use crate::Result;

/// The fields of a transformers `CLIPTextConfig` that the forward depends on.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-5
}

impl Config {
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path)
    }
}

/// One pre-norm CLIP transformer layer, `x + attn(ln1(x))` then `x + mlp(ln2(x))` — shared by the text tower
/// (causal mask) and CLIP's vision tower (no mask).
pub struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    heads: usize,
}

/// The sizes of an [`EncoderLayer`].
#[derive(Clone, Copy, Debug)]
pub struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f64,
}

impl EncoderLayer {
    pub fn load(w: &Weights, s: LayerShape) -> Result<Self> {
        let h = s.hidden;
        let attn = w.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), h, s.eps)?,
            q_proj: Linear::load(&attn.pp("q_proj"), h, h, true)?,
            k_proj: Linear::load(&attn.pp("k_proj"), h, h, true)?,
            v_proj: Linear::load(&attn.pp("v_proj"), h, h, true)?,
            out_proj: Linear::load(&attn.pp("out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), h, s.eps)?,
            fc1: Linear::load(&w.pp("mlp.fc1"), h, s.intermediate, true)?,
            fc2: Linear::load(&w.pp("mlp.fc2"), s.intermediate, h, true)?,
            act: s.act,
            heads: s.heads,
        })
    }

    /// `mask` (added to the attention scores, broadcast over batch and heads) is the causal mask of the text
    /// tower; `None` attends everywhere.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let d = h / self.heads;
        let y = self.layer_norm1.forward(x)?;
        let split = |t: Tensor| {
            t.reshape((b, n, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q_proj.forward(&y)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(&y)?)?;
        let v = split(self.v_proj.forward(&y)?)?;
        let mut scores = matmul(&q, &k.t()?)?;
        if let Some(mask) = mask {
            scores = add(&scores, mask)?;
        }
        let probs = crate::nn::softmax_last_dim(&scores)?;
        let attn = matmul(&probs, &v)?.transpose(1, 2)?.reshape((b, n, h))?;
        let x = add(x, &self.out_proj.forward(&attn)?)?;
        let y = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?,
        )?;
        Ok(add(&x, &y)?)
    }
}

/// Which hidden state the condition is taken from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// `last_hidden_state`: the last layer, after `final_layer_norm` (what SD 1.x/2.x use).
    #[default]
    Last,
    /// diffusers' `clip_skip = n`: the hidden state `n` layers before the last, also after `final_layer_norm`.
    Skip(usize),
}

pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    config: Config,
}

impl ClipTextModel {
    /// Builds from a weight source; accepts the hub layout (`text_model.` prefix) and the unprefixed layout
    /// transformers 5 saves, and ignores the `position_ids` buffer some checkpoints carry.
    pub fn load(w: &Weights, config: &Config) -> Result<Self> {
        w.ignore_suffix("position_ids");
        let w = w.optional_prefix("text_model");
        let h = config.hidden_size;
        let emb = w.pp("embeddings");
        let shape = LayerShape {
            hidden: h,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            act: config.hidden_act,
            eps: config.layer_norm_eps,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp("encoder.layers").pp(i), shape))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: emb.get((config.vocab_size, h), "token_embedding.weight")?,
            position_embedding: emb.get(
                (config.max_position_embeddings, h),
                "position_embedding.weight",
            )?,
            layers,
            final_layer_norm: LayerNorm::load(&w.pp("final_layer_norm"), h, config.layer_norm_eps)?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The dtype the encoder computes in; it answers in f32 (f64 for an f64 model).
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// The input token-embedding table `[vocab, d]`.
    pub fn token_embedding(&self) -> &Tensor {
        &self.token_embedding
    }

    /// Input embeddings of token ids `[B, L]` → `[B, L, d]`, in f32 (f64 for an f64 model) like everything
    /// outside the model: learned rows are placed among them.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let flat = self.token_embedding.index_select(&ids.flatten_all()?, 0)?;
        Ok(flat
            .reshape((b, l, self.config.hidden_size))?
            .to_dtype(crate::device::outer_dtype(self.dtype()))?)
    }

    /// Encodes token ids `[B, L]` (u32 or i64).
    pub fn forward(&self, ids: &Tensor, output: Output) -> Result<Tensor> {
        let ids = ids.to_dtype(DType::U32)?;
        self.forward_embeds(&self.embed(&ids)?, output)
    }

    /// Encodes input embeddings `[B, L, d]` (positions are added here, as in transformers).
    pub fn forward_embeds(&self, embeds: &Tensor, output: Output) -> Result<Tensor> {
        let (_, l, _) = embeds.dims3()?;
        let embeds = &embeds.to_dtype(self.dtype())?;
        let positions = self.position_embedding.narrow(0, 0, l)?;
        let mut x = add(embeds, &positions)?;
        let mask = causal_mask(l, embeds.device())?.to_dtype(embeds.dtype())?;
        let keep = match output {
            Output::Last => self.layers.len(),
            Output::Skip(n) => self.layers.len().saturating_sub(n),
        };
        for layer in &self.layers[..keep] {
            x = layer.forward(&x, Some(&mask))?;
        }
        Ok(self
            .final_layer_norm
            .forward(&x)?
            .to_dtype(crate::device::outer_dtype(self.dtype()))?)
    }
}

/// `[1, 1, L, L]` with −inf above the diagonal: a token sees only itself and what precedes it.
fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, l, l), device)?)
}
