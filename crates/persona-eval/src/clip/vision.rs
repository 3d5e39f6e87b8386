//! CLIP's vision tower (transformers' `CLIPVisionTransformer`): patch embedding without bias, a learned class token,
//! learned positions, `pre_layrnorm`, pre-norm encoder layers with full (unmasked) attention, and `post_layernorm` of
//! the class token as the pooled output.

use candle_core::{Module, Tensor};
use persona_diffusion::models::clip_text::{EncoderLayer, LayerShape};
use persona_diffusion::nn::{LayerNorm, Weights};
use persona_diffusion::{Error, Result};

use super::VisionConfig;

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
        let shape = LayerShape {
            hidden: h,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            eps: c.layer_norm_eps,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp("encoder.layers").pp(i), shape))
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
        let class = self
            .class_embedding
            .reshape((1, 1, c.hidden_size))?
            .broadcast_as((b, 1, c.hidden_size))?;
        let x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        Ok(self
            .post_layernorm
            .forward(&x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)?)
    }
}
