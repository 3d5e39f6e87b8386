//! The UNet's resolution levels: `ResnetBlock2D`, down/up samplers and the (cross-attention) down, mid and up
//! blocks of diffusers' `unet_2d_blocks`.

use candle_core::{Module, Tensor};

use super::transformer::{Transformer2D, TransformerOptions};
use crate::nn::grad::{add, cat2};
use crate::nn::{
    norm_act_conv, upsample_nearest, Activation, AttentionControl, Condition, Conv2d, GroupNorm,
    Linear, Weights,
};
use crate::Result;

/// Settings of a ResNet block shared across the model.
#[derive(Clone, Copy, Debug)]
pub struct ResnetOptions {
    pub groups: usize,
    pub eps: f64,
    /// Width of the time embedding; `None` for blocks without one (VAE).
    pub temb_channels: Option<usize>,
    pub act: Activation,
}

/// `ResnetBlock2D` (time-scale-shift "default", output scale 1).
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, cin: usize, cout: usize, o: ResnetOptions) -> Result<Self> {
        let time_emb_proj = match o.temb_channels {
            Some(t) => Some(Linear::load(&w.pp("time_emb_proj"), t, cout, true)?),
            None => None,
        };
        let conv_shortcut = if cin != cout {
            Some(Conv2d::load(&w.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(&w.pp("norm1"), o.groups, cin, o.eps)?,
            conv1: Conv2d::load(&w.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::load(&w.pp("norm2"), o.groups, cout, o.eps)?,
            conv2: Conv2d::load(&w.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut,
            act: o.act,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = norm_act_conv(&self.norm1, self.act, &self.conv1, x)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&self.act.forward(temb)?)?;
            h = add(&h, &t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = norm_act_conv(&self.norm2, self.act, &self.conv2, &h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok(add(&skip, &h)?)
    }
}

/// A stride-2 3×3 convolution (`downsamplers.0.conv`). The VAE's variant pads only right and bottom.
pub struct Downsample {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample {
    pub fn load(w: &Weights, channels: usize, padding: usize) -> Result<Self> {
        let conv = Conv2d::load(
            &w.pp("downsamplers.0.conv"),
            channels,
            channels,
            3,
            2,
            padding,
        )?;
        Ok(Self {
            conv,
            asymmetric_pad: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            return Ok(self.conv.forward(&x)?);
        }
        Ok(self.conv.forward(x)?)
    }
}

/// Nearest ×2 (or to the skip connection's size, as diffusers does for odd sizes), then a 3×3 convolution.
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn load(w: &Weights, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&w.pp("upsamplers.0.conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        Ok(self.conv.forward(&upsample_nearest(x, th, tw)?)?)
    }
}

/// What the cross-attention blocks read: the condition and an optional steering plug-in.
#[derive(Clone, Copy)]
pub struct CrossAttnInput<'a> {
    pub condition: &'a Condition,
    pub control: Option<&'a dyn AttentionControl>,
}

/// `DownBlock2D` / `CrossAttnDownBlock2D` (attentions present) / `DownEncoderBlock2D` (no time embedding).
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsample: Option<Downsample>,
}

/// Shape of one down or up block.
pub struct BlockSpec<'a> {
    pub w: &'a Weights,
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub layers: usize,
    pub resnet: ResnetOptions,
    pub transformer: Option<TransformerOptions>,
    /// Down blocks: Some(padding) adds a downsampler; up blocks: Some(_) adds an upsampler.
    pub resample: Option<usize>,
}

fn load_attention(s: &BlockSpec, j: usize) -> Result<Option<Transformer2D>> {
    match s.transformer {
        Some(t) => {
            let name = format!("{}.attentions.{j}", s.name);
            Ok(Some(Transformer2D::load(
                &s.w.pp("attentions").pp(j),
                &name,
                s.cout,
                t,
            )?))
        }
        None => Ok(None),
    }
}

impl DownBlock {
    pub fn load(s: BlockSpec) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..s.layers {
            let cin = if j == 0 { s.cin } else { s.cout };
            resnets.push(ResnetBlock2D::load(
                &s.w.pp("resnets").pp(j),
                cin,
                s.cout,
                s.resnet,
            )?);
            attentions.extend(load_attention(&s, j)?);
        }
        let downsample = s
            .resample
            .map(|pad| Downsample::load(s.w, s.cout, pad))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsample,
        })
    }

    /// Returns the output and every intermediate state the up path concatenates (skip connections).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        cross: Option<CrossAttnInput>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut states = Vec::new();
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, temb)?;
            if let (Some(attn), Some(c)) = (self.attentions.get(j), cross) {
                x = attn.forward(&x, c.condition, c.control)?;
            }
            states.push(x.clone());
        }
        if let Some(down) = &self.downsample {
            x = down.forward(&x)?;
            states.push(x.clone());
        }
        Ok((x, states))
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs.
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
}

impl MidBlock {
    pub fn load(
        w: &Weights,
        channels: usize,
        resnet: ResnetOptions,
        t: TransformerOptions,
    ) -> Result<Self> {
        let resnets = (0..2)
            .map(|j| ResnetBlock2D::load(&w.pp("resnets").pp(j), channels, channels, resnet))
            .collect::<Result<_>>()?;
        let attentions = vec![Transformer2D::load(
            &w.pp("attentions.0"),
            "mid_block.attentions.0",
            channels,
            t,
        )?];
        Ok(Self {
            resnets,
            attentions,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, cross: CrossAttnInput) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, Some(temb))?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(&x, cross.condition, cross.control)?;
            x = resnet.forward(&x, Some(temb))?;
        }
        Ok(x)
    }
}

/// `UpBlock2D` / `CrossAttnUpBlock2D`: each resnet first concatenates one skip connection.
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsample: Option<Upsample>,
}

impl UpBlock {
    /// `skip_channels[j]` is the width of the skip connection the j-th resnet concatenates.
    pub fn load(s: BlockSpec, skip_channels: &[usize]) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for (j, skip) in skip_channels.iter().enumerate() {
            let cin = if j == 0 { s.cin } else { s.cout };
            resnets.push(ResnetBlock2D::load(
                &s.w.pp("resnets").pp(j),
                cin + skip,
                s.cout,
                s.resnet,
            )?);
            attentions.extend(load_attention(&s, j)?);
        }
        let upsample = s
            .resample
            .map(|_| Upsample::load(s.w, s.cout))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsample,
        })
    }

    /// `skips` are popped from the end; `next_size` is the spatial size the upsampler must reach.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        cross: CrossAttnInput,
        next_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| crate::Error::Msg("UNet: skip connections exhausted".into()))?;
            x = resnet.forward(&cat2(&x, &skip, 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x, cross.condition, cross.control)?;
            }
        }
        if let Some(up) = &self.upsample {
            x = up.forward(&x, next_size)?;
        }
        Ok(x)
    }
}
