//! The CLIP prompt score: transformers' `CLIPModel` (config-driven; ViT-B/32 as in `openai/clip-vit-base-patch32`)
//! with its tensor names, `CLIPImageProcessor`'s preprocessing and the CLIP tokenizer. See `docs/clip.md`.
//!
//! The text tower is persona-diffusion's `ClipTextModel`; this module adds the vision tower, the pooling of the text
//! tower, both projections and the cosine.

mod preprocess;
mod resample;
mod scorer;
mod vision;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use persona_diffusion::loading::component_files;
use persona_diffusion::models::clip_text::{self, Output};
use persona_diffusion::models::ClipTextModel;
use persona_diffusion::nn::{read_json, Activation, Linear, Weights};
use persona_diffusion::{Error, Result};
use serde_json::Value;

pub use preprocess::Preprocessor;
pub use scorer::ClipScorer;
pub use vision::ClipVisionModel;

/// `CLIPTextConfig` fields the forward depends on; missing fields take transformers' defaults (ViT-B/32's).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Decides the pooling position (see [`ClipModel::pooling_position`]).
    pub eos_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl TextConfig {
    fn encoder(&self) -> clip_text::Config {
        clip_text::Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            max_position_embeddings: self.max_position_embeddings,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

/// `CLIPVisionConfig` fields the forward depends on, with transformers' defaults.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A `CLIPModel` `config.json`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
}

fn default_projection_dim() -> usize {
    512
}

impl Config {
    /// Reads a config as transformers does: a non-null legacy `text_config_dict` / `vision_config_dict` replaces
    /// `text_config` / `vision_config` (fields it lacks take the defaults); null sub-configs are defaults.
    pub fn read(path: &Path) -> Result<Self> {
        let mut json: Value = read_json(path)?;
        if let Value::Object(map) = &mut json {
            for key in ["text_config", "vision_config"] {
                match map.remove(&format!("{key}_dict")) {
                    Some(legacy @ Value::Object(_)) => {
                        map.insert(key.to_string(), legacy);
                    }
                    _ if map.get(key).is_some_and(Value::is_null) => {
                        map.remove(key);
                    }
                    _ => {}
                }
            }
        }
        let config: Self = serde_json::from_value(json)
            .map_err(|e| Error::file(path, format!("invalid config: {e}")))?;
        config.check().map_err(|msg| Error::file(path, msg))?;
        Ok(config)
    }

    /// Sizes the forward divides by or builds tensors from.
    fn check(&self) -> std::result::Result<(), String> {
        let (t, v) = (&self.text_config, &self.vision_config);
        if t.num_attention_heads == 0 || t.hidden_size % t.num_attention_heads != 0 {
            return Err(format!(
                "text hidden_size {} is not a multiple of {} heads",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return Err(format!(
                "vision hidden_size {} is not a multiple of {} heads",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.patch_size > v.image_size {
            return Err(format!(
                "patch_size {} does not fit image_size {}",
                v.patch_size, v.image_size
            ));
        }
        Ok(())
    }
}

/// transformers' `CLIPModel`: both towers, their projections and the logit scale.
pub struct ClipModel {
    text: ClipTextModel,
    vision: ClipVisionModel,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: f64,
    config: Config,
}

impl ClipModel {
    /// Loads a transformers model folder: `config.json` and `model.safetensors` (or its shards / a single variant).
    /// Every problem is reported at once, naming the file.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = Config::read(&dir.join("config.json"))?;
        let w = Weights::from_files(&component_files(dir, "model", None)?, device)?;
        let model = Self::from_weights(&w, &config)?;
        w.finish()?;
        Ok(model)
    }

    /// Builds from a weight source holding `CLIPModel`'s state dict (hub names; `position_ids` buffers tolerated).
    pub fn from_weights(w: &Weights, config: &Config) -> Result<Self> {
        w.ignore_suffix("position_ids");
        let (t, v, p) = (
            &config.text_config,
            &config.vision_config,
            config.projection_dim,
        );
        let logit_scale = w.get((), "logit_scale")?;
        Ok(Self {
            text: ClipTextModel::load(&w.pp("text_model"), &t.encoder())?,
            vision: ClipVisionModel::load(&w.pp("vision_model"), v)?,
            text_projection: Linear::load(&w.pp("text_projection"), t.hidden_size, p, false)?,
            visual_projection: Linear::load(&w.pp("visual_projection"), v.hidden_size, p, false)?,
            logit_scale: f64::from(logit_scale.to_dtype(DType::F32)?.to_scalar::<f32>()?),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `exp(logit_scale)`: the factor between cosines and transformers' `logits_per_image` (100 for trained CLIP).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale.exp()
    }

    /// transformers' `get_image_features`: projected, not normalised, `[B, projection_dim]`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_dtype(DType::F32)?;
        Ok(self
            .visual_projection
            .forward(&self.vision.forward(&pixels)?)?)
    }

    /// transformers' `get_text_features` for token ids `[B, L]` (u32 or i64): projected, not normalised.
    /// The pooled state is the final-layer-normed hidden state at [`ClipModel::pooling_position`]; with a causal
    /// mask it does not depend on anything after that position, so padding (any pad id, any length) is irrelevant.
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.to_dtype(DType::U32)?;
        let rows = ids.to_vec2::<u32>()?;
        self.check_ids(&rows)?;
        let hidden = self.text.forward(&ids, Output::Last)?; // [B, L, H]
        let (b, l, h) = hidden.dims3()?;
        let picks: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i * l + self.pooling_position(r)) as u32)
            .collect();
        let picks = Tensor::from_vec(picks, b, hidden.device())?;
        let pooled = hidden.reshape((b * l, h))?.index_select(&picks, 0)?;
        Ok(self.text_projection.forward(&pooled)?)
    }

    /// Where transformers 5.23's `CLIPTextModel` pools a row of ids. With the legacy `eos_token_id` 2 of the openai
    /// configs it takes the (first) largest id — the EOS, since `<|endoftext|>` is the last id of the vocabulary,
    /// unless the row holds added tokens. Otherwise it takes the first `eos_token_id` (position 0 if none).
    pub fn pooling_position(&self, ids: &[u32]) -> usize {
        match self.config.text_config.eos_token_id {
            2 => ids
                .iter()
                .enumerate()
                .fold(0, |best, (i, &t)| if t > ids[best] { i } else { best }),
            eos => ids.iter().position(|&t| t == eos).unwrap_or(0),
        }
    }

    /// Ids the embedding tables cannot take are errors rather than out-of-range reads.
    fn check_ids(&self, rows: &[Vec<u32>]) -> Result<()> {
        let t = &self.config.text_config;
        let len = rows.first().map_or(0, Vec::len);
        if rows.is_empty() || len == 0 || len > t.max_position_embeddings {
            return Err(Error::Msg(format!(
                "token ids must be [B, 1..={}], got {} rows of {len}",
                t.max_position_embeddings,
                rows.len()
            )));
        }
        match rows
            .iter()
            .flatten()
            .find(|&&id| id as usize >= t.vocab_size)
        {
            Some(id) => Err(Error::Msg(format!(
                "token id {id} is outside the vocabulary ({} ids)",
                t.vocab_size
            ))),
            None => Ok(()),
        }
    }

    /// L2-normalised image embeddings `[B, projection_dim]` of pixels `[B, 3, S, S]` (S = `image_size`).
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.image_features(pixels)?)
    }

    /// L2-normalised text embeddings `[B, projection_dim]` of token ids `[B, L]`.
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.text_features(ids)?)
    }

    /// Cosine of every image with every text, `[B_images, B_texts]` (the prompt score; transformers'
    /// `logits_per_image` divided by [`ClipModel::logit_scale`]).
    pub fn score(&self, pixels: &Tensor, ids: &Tensor) -> Result<Tensor> {
        cosine(&self.image_embeds(pixels)?, &self.text_embeds(ids)?)
    }
}

/// `x / ‖x‖` along the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

/// Cosines of normalised embeddings: `image_embeds · text_embedsᵀ`, `[N_images, N_texts]`.
pub fn cosine(image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
    Ok(image_embeds.matmul(&text_embeds.t()?)?)
}
