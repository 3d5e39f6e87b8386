//! diffusers' `Transformer2DModel` (continuous input) and `BasicTransformerBlock`: the UNet's spatial
//! transformer, where image features attend to themselves and to the text condition.

use candle_core::{Module, Tensor};

use crate::nn::grad::add;
use crate::nn::{
    geglu_linear, Attention, AttentionControl, Condition, Conv2d, GroupNorm, LayerId, LayerNorm,
    Linear, Weights,
};
use crate::Result;

/// GEGLU feed-forward: `net.2(h · gelu(g))` with `[h, g] = net.0.proj(x)`.
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn load(w: &Weights, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: Linear::load(&w.pp("net.0.proj"), dim, inner * 2, true)?,
            out: Linear::load(&w.pp("net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(geglu_linear(&self.proj.forward(x)?, &self.out)?)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    /// Module path of `attn2`, the cross-attention layer that methods steer.
    attn2_name: String,
}

impl BasicTransformerBlock {
    fn load(
        w: &Weights,
        name: String,
        dim: usize,
        heads: usize,
        context_dim: usize,
        eps: f64,
    ) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, eps)?,
            attn1: Attention::load(&w.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: LayerNorm::load(&w.pp("norm2"), dim, eps)?,
            attn2: Attention::load(&w.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, eps)?,
            ff: FeedForward::load(&w.pp("ff"), dim)?,
            attn2_name: format!("{name}.attn2"),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        condition: &Condition,
        control: Option<&dyn AttentionControl>,
        resolution: (usize, usize),
    ) -> Result<Tensor> {
        let x = add(&self.attn1.forward_self(&self.norm1.forward(x)?)?, x)?;
        let layer = control.map(|_| LayerId {
            name: self.attn2_name.clone(),
            resolution,
            heads: self.attn2.heads(),
        });
        let steer = control.zip(layer.as_ref());
        let x = add(
            &self
                .attn2
                .forward_cross(&self.norm2.forward(&x)?, condition, steer)?,
            &x,
        )?;
        Ok(add(&self.ff.forward(&self.norm3.forward(&x)?)?, &x)?)
    }
}

/// `proj_in` / `proj_out`: a linear layer (SD 2.x `use_linear_projection`) or a 1×1 convolution (SD 1.x).
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn load(w: &Weights, linear: bool, cin: usize, cout: usize) -> Result<Self> {
        Ok(if linear {
            Self::Linear(Linear::load(w, cin, cout, true)?)
        } else {
            Self::Conv(Conv2d::load(w, cin, cout, 1, 1, 0)?)
        })
    }
}

/// Options shared by every spatial transformer of a UNet.
#[derive(Clone, Copy, Debug)]
pub struct TransformerOptions {
    pub layers: usize,
    pub heads: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
    pub norm_eps: f64,
}

pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn load(w: &Weights, name: &str, channels: usize, o: TransformerOptions) -> Result<Self> {
        let lin = o.linear_projection;
        let blocks = (0..o.layers)
            .map(|i| {
                let bw = w.pp("transformer_blocks").pp(i);
                let bname = format!("{name}.transformer_blocks.{i}");
                BasicTransformerBlock::load(
                    &bw,
                    bname,
                    channels,
                    o.heads,
                    o.context_dim,
                    o.norm_eps,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::load(&w.pp("norm"), o.groups, channels, 1e-6)?,
            proj_in: Projection::load(&w.pp("proj_in"), lin, channels, channels)?,
            blocks,
            proj_out: Projection::load(&w.pp("proj_out"), lin, channels, channels)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        condition: &Condition,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let normed = self.norm.forward(x)?;
        let mut tokens = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(&normed)?)?,
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, condition, control, (h, w))?;
        }
        let to_map = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let out = match &self.proj_out {
            Projection::Linear(l) => to_map(&l.forward(&tokens)?)?,
            Projection::Conv(conv) => conv.forward(&to_map(&tokens)?.contiguous()?)?,
        };
        Ok(add(&out, x)?)
    }
}
