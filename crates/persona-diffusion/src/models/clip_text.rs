//! CLIP text encoder (transformers' `CLIPTextModel`): SD 1.x ViT-L/14 (quick_gelu) and SD 2.x OpenCLIP ViT-H
//! (exact gelu), and SDXL's `CLIPTextModelWithProjection`. Runs from token ids or from input embeddings — personalization methods put learned vectors
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

/// Which hidden state the condition is taken from. SDXL pipelines read it their own way (no final layer
/// norm, one layer earlier): `Last` is SDXL's default `hidden_states[-2]`, `Skip(n)` its `clip_skip = n`,
/// `hidden_states[-(n + 2)]`.
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
        let keep = match output {
            Output::Last => self.layers.len(),
            Output::Skip(n) => self.layers.len().saturating_sub(n),
        };
        let (x, _) = self.run_layers(embeds, keep, false)?;
        Ok(self
            .final_layer_norm
            .forward(&x)?
            .to_dtype(crate::device::outer_dtype(self.dtype()))?)
    }

    /// SDXL's reading of the encoder: transformers' `hidden_states[-(from_end + 1)]` — the state after all but
    /// the last `from_end` layers, *without* `final_layer_norm` (`from_end = 1` is SDXL's penultimate state,
    /// `clip_skip = n` is `from_end = n + 1`) — and, with `last`, the final-layer-normed last state
    /// (`last_hidden_state`, what the pooled output is taken from). Both in f32 (f64 for an f64 model).
    pub fn forward_embeds_hidden(
        &self,
        embeds: &Tensor,
        from_end: usize,
        last: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.layers.len();
        if from_end > n {
            return Err(crate::Error::Msg(format!(
                "hidden state {from_end} layers before the last of a {n}-layer text encoder does not exist"
            )));
        }
        let outer = crate::device::outer_dtype(self.dtype());
        let (hidden, rest) = self.run_layers(embeds, n - from_end, last)?;
        let last = rest
            .map(|x| -> Result<Tensor> { Ok(self.final_layer_norm.forward(&x)?.to_dtype(outer)?) })
            .transpose()?;
        Ok((hidden.to_dtype(outer)?, last))
    }

    /// Positions, then the first `keep` layers (model dtype); with `full`, also the state after every layer.
    fn run_layers(
        &self,
        embeds: &Tensor,
        keep: usize,
        full: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (_, l, _) = embeds.dims3()?;
        let embeds = &embeds.to_dtype(self.dtype())?;
        let positions = self.position_embedding.narrow(0, 0, l)?;
        let mut x = add(embeds, &positions)?;
        let mask = causal_mask(l, embeds.device())?.to_dtype(embeds.dtype())?;
        for layer in &self.layers[..keep] {
            x = layer.forward(&x, Some(&mask))?;
        }
        if !full {
            return Ok((x, None));
        }
        let mut y = x.clone();
        for layer in &self.layers[keep..] {
            y = layer.forward(&y, Some(&mask))?;
        }
        Ok((x, Some(y)))
    }
}

/// The `CLIPTextConfig` fields of transformers' `CLIPTextModelWithProjection` beyond [`Config`].
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ProjectionConfig {
    pub projection_dim: usize,
    /// `2` (old configs, SDXL's included) makes transformers pool at the highest token id (`argmax`);
    /// any other value pools at the first occurrence of that id.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_eos() -> u32 {
    2
}

impl ProjectionConfig {
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path)
    }
}

/// transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`, OpenCLIP bigG): the text tower plus
/// `text_projection` (no bias) applied to the pooled state, giving `text_embeds`.
pub struct ClipTextModelWithProjection {
    pub model: ClipTextModel,
    text_projection: Linear,
    eos_token_id: u32,
}

impl ClipTextModelWithProjection {
    /// Hub and transformers-5 layouts both name the tower `text_model.*` and the projection `text_projection`.
    pub fn load(w: &Weights, config: &Config, projection: &ProjectionConfig) -> Result<Self> {
        let model = ClipTextModel::load(w, config)?;
        let text_projection = Linear::load(
            &w.pp("text_projection"),
            config.hidden_size,
            projection.projection_dim,
            false,
        )?;
        Ok(Self {
            model,
            text_projection,
            eos_token_id: projection.eos_token_id,
        })
    }

    pub fn projection_dim(&self) -> usize {
        self.text_projection.weight().dim(0).unwrap_or(0)
    }

    /// Where transformers pools each row of token ids `[B, L]`: the first highest id when the config's
    /// `eos_token_id` is 2, else the first position holding `eos_token_id` (0 when there is none).
    pub fn pool_positions(&self, ids: &Tensor) -> Result<Vec<usize>> {
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        Ok(rows
            .iter()
            .map(|row| {
                if self.eos_token_id == 2 {
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&id| id == max).unwrap_or(0)
                } else {
                    row.iter()
                        .position(|&id| id == self.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect())
    }

    /// `text_embeds` `[B, projection_dim]` from the final-layer-normed last state `[B, L, d]` and the pooling
    /// positions ([`Self::pool_positions`]).
    pub fn project(&self, last: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let rows = positions
            .iter()
            .enumerate()
            .map(|(b, &p)| last.get(b)?.get(p))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        Ok(self
            .text_projection
            .forward(&pooled)?
            .to_dtype(crate::device::outer_dtype(self.model.dtype()))?)
    }

    /// SDXL's reading of token ids `[B, L]`: the hidden state `from_end` layers before the end (no final layer
    /// norm, see [`ClipTextModel::forward_embeds_hidden`]) and `text_embeds`.
    pub fn forward_hidden(&self, ids: &Tensor, from_end: usize) -> Result<(Tensor, Tensor)> {
        let ids = ids.to_dtype(DType::U32)?;
        let (hidden, last) =
            self.model
                .forward_embeds_hidden(&self.model.embed(&ids)?, from_end, true)?;
        let last = last.ok_or_else(|| crate::Error::Msg("no last hidden state".into()))?;
        Ok((hidden, self.project(&last, &self.pool_positions(&ids)?)?))
    }
}

/// `[1, 1, L, L]` with −inf above the diagonal: a token sees only itself and what precedes it.
fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, l, l), device)?)
}
