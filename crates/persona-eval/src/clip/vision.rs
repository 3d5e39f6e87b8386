//! CLIP's vision tower (transformers' `CLIPVisionTransformer`): patch embedding without bias, a learned class token,
//! learned positions, `pre_layrnorm`, pre-norm encoder layers with full (unmasked) attention, and `post_layernorm` of
//! the class token as the pooled output.

use candle_core::{Module, Tensor, D};
use persona_diffusion::nn::{attend, Activation, LayerNorm, Linear, Weights};
use persona_diffusion::{Error, Result};

use super::VisionConfig;

/// One pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
struct EncoderLayer {
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

impl EncoderLayer {
    fn load(w: &Weights, c: &VisionConfig) -> Result<Self> {
        let h = c.hidden_size;
        let attn = w.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), h, c.layer_norm_eps)?,
            q_proj: Linear::load(&attn.pp("q_proj"), h, h, true)?,
            k_proj: Linear::load(&attn.pp("k_proj"), h, h, true)?,
            v_proj: Linear::load(&attn.pp("v_proj"), h, h, true)?,
            out_proj: Linear::load(&attn.pp("out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), h, c.layer_norm_eps)?,
            fc1: Linear::load(&w.pp("mlp.fc1"), h, c.intermediate_size, true)?,
            fc2: Linear::load(&w.pp("mlp.fc2"), c.intermediate_size, h, true)?,
            act: c.hidden_act,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)? / self.heads;
        let y = self.layer_norm1.forward(x)?;
        let (q, k, v) = (self.q_proj.forward(&y)?, self.k_proj.forward(&y)?, self.v_proj.forward(&y)?);
        let attn = attend(&q, &k, &v, self.heads, (head_dim as f64).powf(-0.5), None)?;
        let x = (x + self.out_proj.forward(&attn)?)?;
        let y = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        Ok((x + y)?)
    }
}

pub struct ClipVisionModel {
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    config: VisionConfig,
}

impl ClipVisionModel {
    /// Builds from `vision_model.*` (pass the weights at that prefix).
    pub fn load(w: &Weights, c: &VisionConfig) -> Result<Self> {
        let (h, p) = (c.hidden_size, c.patch_size);
        let emb = w.pp("embeddings");
        let positions = (c.image_size / p).pow(2) + 1;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp("encoder.layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            class_embedding: emb.get(h, "class_embedding")?,
            patch_embedding: emb.get((h, c.num_channels, p, p), "patch_embedding.weight")?,
            position_embedding: emb.get((positions, h), "position_embedding.weight")?,
            pre_layrnorm: LayerNorm::load(&w.pp("pre_layrnorm"), h, c.layer_norm_eps)?,
            layers,
            post_layernorm: LayerNorm::load(&w.pp("post_layernorm"), h, c.layer_norm_eps)?,
            config: c.clone(),
        })
    }

    /// The pooled output (`post_layernorm` of the class token), `[B, hidden]`, of pixels
    /// `[B, channels, image_size, image_size]` (transformers also refuses other sizes without position interpolation).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, height, width) = pixels.dims4()?;
        if (ch, height, width) != (c.num_channels, c.image_size, c.image_size) {
            return Err(Error::Msg(format!(
                "pixel values must be [B, {}, {s}, {s}], got {:?}",
                c.num_channels,
                pixels.dims(),
                s = c.image_size
            )));
        }
        let patches = pixels.conv2d(&self.patch_embedding, 0, c.patch_size, 1, 1)?; // [B, H, g, g]
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [B, g², H]
        let class = self.class_embedding.reshape((1, 1, c.hidden_size))?.broadcast_as((b, 1, c.hidden_size))?;
        let x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)?)
    }
}
