//! diffusers' `AutoencoderKL`: images ↔ latents. Encoding returns the diagonal Gaussian posterior (training
//! samples from it); decoding maps latents back to images in [-1, 1].

use std::path::Path;

use candle_core::{Module, Tensor};

use super::unet::{Downsample, ResnetBlock2D, ResnetOptions, Upsample};
use crate::nn::{attend, read_json, Activation, Conv2d, GroupNorm, Linear, Weights};
use crate::{Error, Result};

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    #[serde(default = "d_four")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_silu")]
    pub act_fn: Activation,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub down_block_types: Vec<String>,
}

fn d_three() -> usize {
    3
}
fn d_one() -> usize {
    1
}
fn d_four() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_silu() -> Activation {
    Activation::Silu
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

impl Config {
    pub fn read(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        if c.block_out_channels.is_empty() {
            return Err(Error::file(path, "block_out_channels is empty"));
        }
        // Each block after the first halves the image: 4 blocks (a factor of 8) in every released VAE.
        if c.block_out_channels.len() > 8 {
            return Err(Error::file(
                path,
                format!(
                    "{} block_out_channels: a VAE downscaling by 2^{} is not one persona can run (at most 8 blocks)",
                    c.block_out_channels.len(),
                    c.block_out_channels.len() - 1
                ),
            ));
        }
        Ok(c)
    }

    /// How many pixels one latent covers per side (8 for the real models).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

const EPS: f64 = 1e-6;

/// The mid block's single-head self-attention over pixels, with its own GroupNorm and a residual.
struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl MidAttention {
    /// Accepts the current names and the legacy `query/key/value/proj_attn` of older checkpoints.
    fn load(w: &Weights, c: usize, groups: usize) -> Result<Self> {
        let lin = |names: [&str; 2]| -> Result<Linear> {
            let weight = w.get_any(
                (c, c),
                &[
                    &format!("{}.weight", names[0]),
                    &format!("{}.weight", names[1]),
                ],
            )?;
            let bias = w.get_any(
                c,
                &[&format!("{}.bias", names[0]), &format!("{}.bias", names[1])],
            )?;
            Ok(Linear::from_parts(weight, Some(bias)))
        };
        Ok(Self {
            group_norm: GroupNorm::load(&w.pp("group_norm"), groups, c, EPS)?,
            to_q: lin(["to_q", "query"])?,
            to_k: lin(["to_k", "key"])?,
            to_v: lin(["to_v", "value"])?,
            to_out: lin(["to_out.0", "proj_attn"])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let (q, k, v) = (
            self.to_q.forward(&tokens)?,
            self.to_k.forward(&tokens)?,
            self.to_v.forward(&tokens)?,
        );
        let out = self
            .to_out
            .forward(&attend(&q, &k, &v, 1, (c as f64).powf(-0.5), None)?)?;
        Ok((out.transpose(1, 2)?.reshape((b, c, h, w))? + x)?)
    }
}

/// `UNetMidBlock2D`: resnet, attention, resnet (no time embedding).
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<MidAttention>,
}

impl MidBlock {
    fn load(w: &Weights, c: usize, o: ResnetOptions, attention: bool) -> Result<Self> {
        let r = |j: usize| ResnetBlock2D::load(&w.pp("resnets").pp(j), c, c, o);
        let attention = if attention {
            Some(MidAttention::load(&w.pp("attentions.0"), c, o.groups)?)
        } else {
            None
        };
        Ok(Self {
            resnets: [r(0)?, r(1)?],
            attention,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, None)?;
        if let Some(a) = &self.attention {
            x = a.forward(&x)?;
        }
        self.resnets[1].forward(&x, None)
    }
}

enum Resample {
    Down(Downsample),
    Up(Upsample),
}

/// A resolution level of the encoder or decoder: resnets, then an optional resampler.
struct Level {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<Resample>,
}

impl Level {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x, None)?;
        }
        match &self.resample {
            Some(Resample::Down(d)) => d.forward(&x),
            Some(Resample::Up(u)) => u.forward(&x, None),
            None => Ok(x),
        }
    }
}

struct Encoder {
    conv_in: Conv2d,
    levels: Vec<Level>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    levels: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

/// The encoder's output distribution.
pub struct Posterior {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl Posterior {
    /// `mean + std·noise` with caller-drawn standard normal `noise`.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + (self.logvar.clone() * 0.5)?.exp()?.mul(noise)?)?)
    }
}

pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: Config,
}

impl AutoencoderKL {
    pub fn load(w: &Weights, c: &Config) -> Result<Self> {
        let ch = &c.block_out_channels;
        let (n, lat, g) = (ch.len(), c.latent_channels, c.norm_num_groups);
        let o = ResnetOptions {
            groups: g,
            eps: EPS,
            temb_channels: None,
            act: c.act_fn,
        };
        let e = w.pp("encoder");
        let mut enc_levels = Vec::new();
        for i in 0..n {
            let (cin, cout) = (if i == 0 { ch[0] } else { ch[i - 1] }, ch[i]);
            let bw = e.pp("down_blocks").pp(i);
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::load(
                        &bw.pp("resnets").pp(j),
                        if j == 0 { cin } else { cout },
                        cout,
                        o,
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i != n - 1)
                .then(|| Downsample::load(&bw, cout, 0).map(Resample::Down))
                .transpose()?;
            enc_levels.push(Level { resnets, resample });
        }
        let encoder = Encoder {
            conv_in: Conv2d::load(&e.pp("conv_in"), c.in_channels, ch[0], 3, 1, 1)?,
            levels: enc_levels,
            mid: MidBlock::load(&e.pp("mid_block"), ch[n - 1], o, c.mid_block_add_attention)?,
            norm_out: GroupNorm::load(&e.pp("conv_norm_out"), g, ch[n - 1], EPS)?,
            conv_out: Conv2d::load(&e.pp("conv_out"), ch[n - 1], 2 * lat, 3, 1, 1)?,
            act: c.act_fn,
        };
        let d = w.pp("decoder");
        let mut dec_levels = Vec::new();
        let mut prev = ch[n - 1];
        for i in 0..n {
            let cout = ch[n - 1 - i];
            let bw = d.pp("up_blocks").pp(i);
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::load(
                        &bw.pp("resnets").pp(j),
                        if j == 0 { prev } else { cout },
                        cout,
                        o,
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i != n - 1)
                .then(|| Upsample::load(&bw, cout).map(Resample::Up))
                .transpose()?;
            dec_levels.push(Level { resnets, resample });
            prev = cout;
        }
        let decoder = Decoder {
            conv_in: Conv2d::load(&d.pp("conv_in"), lat, ch[n - 1], 3, 1, 1)?,
            mid: MidBlock::load(&d.pp("mid_block"), ch[n - 1], o, c.mid_block_add_attention)?,
            levels: dec_levels,
            norm_out: GroupNorm::load(&d.pp("conv_norm_out"), g, ch[0], EPS)?,
            conv_out: Conv2d::load(&d.pp("conv_out"), ch[0], c.out_channels, 3, 1, 1)?,
            act: c.act_fn,
        };
        let quant_conv = c
            .use_quant_conv
            .then(|| Conv2d::load(&w.pp("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0))
            .transpose()?;
        let post_quant_conv = c
            .use_post_quant_conv
            .then(|| Conv2d::load(&w.pp("post_quant_conv"), lat, lat, 1, 1, 0))
            .transpose()?;
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Images `[B, 3, H, W]` in [-1, 1] → posterior over latents `[B, 4, H/f, W/f]` (unscaled).
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(x)?;
        for level in &e.levels {
            h = level.forward(&h)?;
        }
        h = e.mid.forward(&h)?;
        h = e
            .conv_out
            .forward(&e.act.forward(&e.norm_out.forward(&h)?)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let lat = self.config.latent_channels;
        let h = h.to_dtype(x.dtype())?;
        let mean = h.narrow(1, 0, lat)?;
        let logvar = h.narrow(1, lat, lat)?.clamp(-30f32, 20f32)?;
        Ok(Posterior { mean, logvar })
    }

    /// Latents (already divided by the scaling factor) → images in roughly [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let d = &self.decoder;
        let mut h = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        h = d.mid.forward(&d.conv_in.forward(&h)?)?;
        for level in &d.levels {
            h = level.forward(&h)?;
        }
        Ok(d.conv_out
            .forward(&d.act.forward(&d.norm_out.forward(&h)?)?)?
            .to_dtype(z.dtype())?)
    }
}
