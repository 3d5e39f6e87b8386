//! diffusers' `UNet2DConditionModel` for SD 1.x, 2.x and SDXL: the noise predictor, configured from its own
//! `config.json`, with parameter names exactly as diffusers' state dict. SDXL's micro-conditioning
//! (`addition_embed_type: "text_time"`) enters through [`AddedCond`].

mod blocks;
mod transformer;

use std::path::Path;

use candle_core::{DType, Module, Tensor};

use blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
pub use blocks::{CrossAttnInput, Downsample, ResnetBlock2D, ResnetOptions, Upsample};
use transformer::TransformerOptions;

use crate::nn::{
    read_json, Activation, AttentionControl, Condition, Conv2d, GroupNorm, Linear, Weights,
};
use crate::{Error, Result};

/// A config value that is either one number for every block or one per block.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i.min(v.len() - 1)],
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        matches!(self, PerBlock::One(_)) || matches!(self, PerBlock::Each(v) if v.len() == n)
    }
}

fn one(v: usize) -> PerBlock {
    PerBlock::One(v)
}

/// The `UNet2DConditionModel` config keys SD 1.x, 2.x and SDXL use. Keys for features this model does not
/// implement (class embeddings, other added conditionings) are read so that a config using them is refused
/// with a clear error instead of being silently misread.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(default = "d_sample")]
    pub sample_size: usize,
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_silu")]
    pub act_fn: Activation,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    #[serde(default = "d_one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock,
    /// Head counts; when absent diffusers takes `attention_head_dim` as the head count (a historical naming).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Softmax in f32 for fp16 models; always the case here (half-precision softmax accumulates in f32).
    /// SDXL's config has `null`.
    #[serde(default, deserialize_with = "null_false")]
    pub upcast_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// `"text_time"` (SDXL): pooled text embeddings and time ids added to the time embedding.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Sinusoidal width of each SDXL time id (256 for SDXL).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding` (SDXL: 6 × 256 + 1280 = 2816).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
}

fn null_false<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(<Option<bool> as serde::Deserialize>::deserialize(d)?.unwrap_or(false))
}

fn d_sample() -> usize {
    64
}
fn d_four() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_layers() -> PerBlock {
    one(2)
}
fn d_one() -> usize {
    1
}
fn d_silu() -> Activation {
    Activation::Silu
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_one_per_block() -> PerBlock {
    one(1)
}
fn d_head_dim() -> PerBlock {
    one(8)
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}

/// The largest `sample_size` (latent side) a UNet config may declare.
pub const MAX_SAMPLE_SIZE: usize = 1024;

impl Config {
    pub fn read(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate().map_err(|msg| Error::file(path, msg))?;
        Ok(c)
    }

    /// Refuses configs that describe an architecture this model does not build.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        let unsupported = |what: &str| {
            Err(format!(
                "UNet config uses {what}, which persona does not support yet"
            ))
        };
        // The default image side is sample_size × the VAE factor (8): 1024 latents is 8192 pixels, the
        // largest side `--height`/`--width` accept; a larger value is a typo that would allocate terabytes.
        if !(1..=MAX_SAMPLE_SIZE).contains(&self.sample_size) {
            return Err(format!(
                "sample_size {} is not a latent size (1 ..= {MAX_SAMPLE_SIZE}; SD 2.1 uses 96, SDXL 128)",
                self.sample_size
            ));
        }
        if self.class_embed_type.is_some() {
            return unsupported("class_embed_type");
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if self.addition_time_embed_dim.is_none()
                    || self.projection_class_embeddings_input_dim.is_none() =>
            {
                return Err(
                    "addition_embed_type text_time needs addition_time_embed_dim and \
                            projection_class_embeddings_input_dim"
                        .into(),
                );
            }
            Some("text_time") => {}
            Some(other) => return unsupported(&format!("addition_embed_type {other}")),
        }
        if self.dual_cross_attention || self.only_cross_attention.as_bool().unwrap_or(false) {
            return unsupported("dual/only cross-attention");
        }
        if self.resnet_time_scale_shift != "default" || self.time_embedding_type != "positional" {
            return unsupported("a non-default time embedding");
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{n} block_out_channels but {} down / {} up block types",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(
                t.as_str(),
                "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D"
            ) {
                return Err(format!("unsupported block type {t}"));
            }
        }
        if let Some(m) = &self.mid_block_type {
            if m != "UNetMidBlock2DCrossAttn" {
                return Err(format!("unsupported mid block {m}"));
            }
        }
        let lists = [
            &self.layers_per_block,
            &self.transformer_layers_per_block,
            self.heads_config(),
        ];
        if lists.iter().any(|l| !l.len_ok(n)) {
            return Err(format!("a per-block list does not have {n} entries"));
        }
        Ok(())
    }

    fn heads_config(&self) -> &PerBlock {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// Whether the model takes SDXL's added conditioning ([`AddedCond`]).
    pub fn text_time(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }

    /// Number of attention heads of down block `i`.
    pub fn heads(&self, i: usize) -> usize {
        self.heads_config().get(i)
    }
}

/// Sinusoidal timestep features, diffusers' `get_timestep_embedding` (max period 10000).
fn timestep_features(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    dtype: DType,
) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    // In f32 whatever the model's dtype, cast afterwards: diffusers does so, and a bf16 argument (t·f up to
    // ~1000) would lose whole periods of the sine.
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let features = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    Ok(features.to_dtype(dtype)?)
}

/// SDXL's added conditioning (`added_cond_kwargs`): the pooled text embeddings of the second text encoder
/// `[B, projection_dim]` and the micro-conditioning time ids `[B, 6]` (`original_size + crop_top_left +
/// target_size`, each (height, width)), one row per UNet batch row.
#[derive(Clone, Debug)]
pub struct AddedCond {
    pub text_embeds: Tensor,
    pub time_ids: Tensor,
}

/// `add_embedding` of a `text_time` UNet: a `TimestepEmbedding` over `[text_embeds, sinusoid(time_ids)]`.
struct AddEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    time_dim: usize,
}

pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    add_embedding: Option<AddEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: Config,
}

impl UNet2DConditionModel {
    pub fn load(w: &Weights, c: &Config) -> Result<Self> {
        c.validate().map_err(Error::Msg)?;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let temb_dim = ch[0] * 4;
        let resnet = ResnetOptions {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            temb_channels: Some(temb_dim),
            act: c.act_fn,
        };
        let transformer = |i: usize| TransformerOptions {
            layers: c.transformer_layers_per_block.get(i),
            heads: c.heads(i),
            context_dim: c.cross_attention_dim,
            groups: c.norm_num_groups,
            linear_projection: c.use_linear_projection,
            norm_eps: c.norm_eps,
        };
        let mut down_blocks = Vec::new();
        let mut skip_channels = vec![ch[0]];
        for i in 0..n {
            let (cin, cout, last) = (if i == 0 { ch[0] } else { ch[i - 1] }, ch[i], i == n - 1);
            let layers = c.layers_per_block.get(i);
            let cross = c.down_block_types[i].starts_with("CrossAttn");
            let spec = BlockSpec {
                w: &w.pp("down_blocks").pp(i),
                name: format!("down_blocks.{i}"),
                cin,
                cout,
                layers,
                resnet,
                transformer: cross.then(|| transformer(i)),
                resample: (!last).then_some(c.downsample_padding),
            };
            down_blocks.push(DownBlock::load(spec)?);
            skip_channels.extend(std::iter::repeat_n(cout, layers + usize::from(!last)));
        }
        let mid_block = MidBlock::load(&w.pp("mid_block"), ch[n - 1], resnet, transformer(n - 1))?;
        let mut up_blocks = Vec::new();
        let mut prev = ch[n - 1];
        for i in 0..n {
            let rev = n - 1 - i;
            let layers = c.layers_per_block.get(rev) + 1;
            let skips: Vec<usize> = (0..layers)
                .map(|_| skip_channels.pop().unwrap_or(0))
                .collect();
            let cross = c.up_block_types[i].starts_with("CrossAttn");
            let spec = BlockSpec {
                w: &w.pp("up_blocks").pp(i),
                name: format!("up_blocks.{i}"),
                cin: prev,
                cout: ch[rev],
                layers,
                resnet,
                transformer: cross.then(|| transformer(rev)),
                resample: (i != n - 1).then_some(1),
            };
            up_blocks.push(UpBlock::load(spec, &skips)?);
            prev = ch[rev];
        }
        let add_embedding = if c.text_time() {
            let input = c.projection_class_embeddings_input_dim.unwrap_or(0);
            Some(AddEmbedding {
                linear_1: Linear::load(&w.pp("add_embedding.linear_1"), input, temb_dim, true)?,
                linear_2: Linear::load(&w.pp("add_embedding.linear_2"), temb_dim, temb_dim, true)?,
                time_dim: c.addition_time_embed_dim.unwrap_or(0),
            })
        } else {
            None
        };
        Ok(Self {
            add_embedding,
            conv_in: Conv2d::load(&w.pp("conv_in"), c.in_channels, ch[0], 3, 1, 1)?,
            time_linear_1: Linear::load(&w.pp("time_embedding.linear_1"), ch[0], temb_dim, true)?,
            time_linear_2: Linear::load(
                &w.pp("time_embedding.linear_2"),
                temb_dim,
                temb_dim,
                true,
            )?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &w.pp("conv_norm_out"),
                c.norm_num_groups,
                ch[0],
                c.norm_eps,
            )?,
            conv_out: Conv2d::load(&w.pp("conv_out"), ch[0], c.out_channels, 3, 1, 1)?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Predicts noise (or v) for `sample` `[B, C, h, w]` at `timesteps` (`[B]`, or one value for the whole
    /// batch) under `condition`; `control` steers the cross-attention layers. An SDXL UNet needs
    /// [`Self::forward_added`].
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        condition: &Condition,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor> {
        self.forward_added(sample, timesteps, condition, None, control)
    }

    /// Whether [`Self::forward_added`] needs an [`AddedCond`] (SDXL).
    pub fn needs_added(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// The input width of the pooled text embeddings an SDXL UNet expects (`None` for SD 1.x/2.x): the
    /// `add_embedding` input less 6 time ids × `addition_time_embed_dim`.
    pub fn added_text_dim(&self) -> Option<usize> {
        let c = &self.config;
        self.add_embedding.as_ref().map(|a| {
            c.projection_class_embeddings_input_dim
                .unwrap_or(0)
                .saturating_sub(6 * a.time_dim)
        })
    }

    /// [`Self::forward`] with SDXL's added conditioning (`added_cond_kwargs`); an error when the model needs it
    /// and it is missing. Models without `addition_embed_type` ignore it.
    pub fn forward_added(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        condition: &Condition,
        added: Option<&AddedCond>,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor> {
        let b = sample.dim(0)?;
        let t = if timesteps.elem_count() == 1 {
            timesteps.flatten_all()?.broadcast_as(b)?
        } else {
            timesteps.clone()
        };
        let c = &self.config;
        // The model computes in its weights' dtype and answers in the caller's (mixed precision).
        let (dtype, outer) = (self.conv_in.dtype(), sample.dtype());
        let sample = &sample.to_dtype(dtype)?;
        let features = timestep_features(
            &t,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
            dtype,
        )?;
        let mut temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&features)?.silu()?)?;
        if let Some(add) = &self.add_embedding {
            let added = added.ok_or_else(|| {
                Error::Msg(
                    "this UNet (addition_embed_type text_time, SDXL) needs the pooled text embeddings and \
                     time ids (AddedCond)"
                        .into(),
                )
            })?;
            let text = added.text_embeds.to_dtype(dtype)?;
            if text.dims2()?.0 != b || added.time_ids.dims2()?.0 != b {
                return Err(Error::Msg(format!(
                    "added conditioning has {} text-embedding rows and {} time-id rows for a batch of {b}",
                    text.dim(0)?,
                    added.time_ids.dim(0)?
                )));
            }
            // diffusers: add_time_proj(time_ids.flatten()) reshaped to [B, 6·dim], after text_embeds.
            let ids = added.time_ids.flatten_all()?;
            let time =
                timestep_features(&ids, add.time_dim, c.flip_sin_to_cos, c.freq_shift, dtype)?
                    .reshape((b, ()))?;
            let aug = add.linear_2.forward(
                &add.linear_1
                    .forward(&crate::nn::grad::cat2(&text.to_dtype(dtype)?, &time, 1)?)?
                    .silu()?,
            )?;
            temb = crate::nn::grad::add(&temb, &aug)?;
        }
        let temb = temb;
        let cross = CrossAttnInput { condition, control };

        let mut x = self.conv_in.forward(sample)?;
        let mut skips = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let attn = c.down_block_types[i]
                .starts_with("CrossAttn")
                .then_some(cross);
            let (out, states) = block.forward(&x, Some(&temb), attn)?;
            x = out;
            skips.extend(states);
        }
        x = self.mid_block.forward(&x, &temb, cross)?;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n_resnets = c.layers_per_block.get(c.block_out_channels.len() - 1 - i) + 1;
            // The upsampler must reach the size of the next skip connection (diffusers' forward_upsample_size).
            let next_size = skips
                .len()
                .checked_sub(n_resnets + 1)
                .map(|k| (skips[k].dim(2).unwrap_or(0), skips[k].dim(3).unwrap_or(0)));
            x = block.forward(&x, &mut skips, &temb, cross, next_size)?;
        }
        let x = c.act_fn.forward(&self.conv_norm_out.forward(&x)?)?;
        Ok(self.conv_out.forward(&x)?.to_dtype(outer)?)
    }
}
