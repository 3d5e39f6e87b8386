//! SDXL, as diffusers' `StableDiffusionXLPipeline`: two tokenizers and text encoders whose *penultimate*
//! hidden states (no final layer norm) are concatenated into a `[B, 77, d1 + d2]` condition, the pooled
//! `text_embeds` of the second encoder, and the micro-conditioning time ids
//! (`original_size + crop_top_left + target_size`) that the UNet adds to its time embedding.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::{load_component, tokenize_with, StableDiffusion};
use crate::models::clip_text::{self, ClipTextModelWithProjection, Output};
use crate::models::{AddedCond, UNet2DConditionModel};
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// What an SDXL folder adds to a Stable Diffusion pipeline.
pub struct Sdxl {
    /// `tokenizer_2` (SDXL's pads with `!`, the first tokenizer with EOS).
    pub tokenizer_2: ClipTokenizer,
    /// `text_encoder_2`: OpenCLIP bigG with `text_projection` for the pooled embeddings.
    pub text_encoder_2: ClipTextModelWithProjection,
    /// `model_index.json`'s `force_zeros_for_empty_prompt` (default true, as diffusers): an empty negative
    /// prompt conditions the unconditional branch on zeros (embeddings and pooled) instead of encoding "".
    pub force_zeros_for_empty_prompt: bool,
}

impl Sdxl {
    pub(super) fn load(
        dir: &Path,
        unet: &UNet2DConditionModel,
        text_width: usize,
        opts: &super::LoadOptions,
    ) -> Result<Self> {
        if !dir.join("text_encoder_2").is_dir() {
            return Err(Error::file(
                dir.join("text_encoder_2"),
                "missing: the UNet takes SDXL conditioning (addition_embed_type text_time), which needs a \
                 second text encoder",
            ));
        }
        let tokenizer_2 = ClipTokenizer::from_dir(dir.join("tokenizer_2"))?;
        let text_encoder_2 = load_component(
            &dir.join("text_encoder_2"),
            "model",
            opts.variant.as_deref(),
            &opts.device,
            opts.dtype,
            |w, path| {
                ClipTextModelWithProjection::load(
                    w,
                    &clip_text::Config::read(path)?,
                    &clip_text::ProjectionConfig::read(path)?,
                )
            },
        )?;
        let index: serde_json::Value = crate::nn::read_json(&dir.join("model_index.json"))?;
        let force_zeros_for_empty_prompt = index
            .get("force_zeros_for_empty_prompt")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        let c = unet.config();
        let width_2 = text_encoder_2.model.config().hidden_size;
        let unet_path = dir.join("unet/config.json");
        if !unet.needs_added() {
            return Err(Error::file(
                unet_path,
                "an SDXL folder (text_encoder_2) needs a UNet with addition_embed_type text_time",
            ));
        }
        if c.cross_attention_dim != text_width + width_2 {
            return Err(Error::file(
                unet_path,
                format!(
                    "cross_attention_dim {} is not the two text encoders' widths {text_width} + {width_2}",
                    c.cross_attention_dim
                ),
            ));
        }
        if unet.added_text_dim() != Some(text_encoder_2.projection_dim()) {
            return Err(Error::file(
                unet_path,
                format!(
                    "projection_class_embeddings_input_dim {:?} is not 6 × addition_time_embed_dim {:?} + \
                     text_encoder_2's projection_dim {}",
                    c.projection_class_embeddings_input_dim,
                    c.addition_time_embed_dim,
                    text_encoder_2.projection_dim()
                ),
            ));
        }
        Ok(Self {
            tokenizer_2,
            text_encoder_2,
            force_zeros_for_empty_prompt,
        })
    }
}

/// A text encoding: the condition `[B, 77, d]` and, for SDXL, the pooled embeddings `[B, projection_dim]`.
#[derive(Clone, Debug)]
pub struct TextEncoding {
    pub embeds: Tensor,
    pub pooled: Option<Tensor>,
}

/// SDXL's micro-conditioning, each `(height, width)` / `(top, left)` in pixels. `None` sizes default as in
/// diffusers: original = target = the generated image's size; the crop defaults to (0, 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MicroConditioning {
    pub original_size: Option<(usize, usize)>,
    pub crop_top_left: (usize, usize),
    pub target_size: Option<(usize, usize)>,
}

impl MicroConditioning {
    /// Whether anything differs from the defaults (only SDXL models take it).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The six time ids for an image of `height` × `width`: `original_size + crop_top_left + target_size`.
    pub fn time_ids(&self, height: usize, width: usize) -> [f32; 6] {
        let (oh, ow) = self.original_size.unwrap_or((height, width));
        let (ct, cl) = self.crop_top_left;
        let (th, tw) = self.target_size.unwrap_or((height, width));
        [oh, ow, ct, cl, th, tw].map(|v| v as f32)
    }
}

/// diffusers' `clip_skip` for SDXL: `hidden_states[-(clip_skip + 2)]`, i.e. this many layers before the end.
pub(super) fn layers_from_end(output: Output) -> usize {
    match output {
        Output::Last => 1,
        Output::Skip(n) => n + 1,
    }
}

impl StableDiffusion {
    /// Prompts → condition and (SDXL) pooled embeddings, exactly as diffusers' `encode_prompt`: for SDXL the
    /// penultimate hidden states of both encoders (`clip_skip = n`: `n` layers earlier), concatenated, and
    /// `text_embeds` of encoder 2; for SD 1.x/2.x [`Self::encode_prompts`] and no pooled embeddings.
    pub fn encode_text(&self, prompts: &[&str], output: Output) -> Result<TextEncoding> {
        let Some(x) = &self.sdxl else {
            return Ok(TextEncoding {
                embeds: self.encode_prompts(prompts, output)?,
                pooled: None,
            });
        };
        let from_end = layers_from_end(output);
        let ids = self.tokenize(prompts)?;
        let (h1, _) = self.text_encoder.forward_embeds_hidden(
            &self.text_encoder.embed(&ids)?,
            from_end,
            false,
        )?;
        let ids_2 = tokenize_with(&x.tokenizer_2, prompts, &self.device)?;
        let (h2, pooled) = x.text_encoder_2.forward_hidden(&ids_2, from_end)?;
        Ok(TextEncoding {
            embeds: Tensor::cat(&[h1, h2], 2)?,
            pooled: Some(pooled),
        })
    }

    /// The unconditional branch's encoding of a negative prompt: SDXL with `force_zeros_for_empty_prompt`
    /// gives zeros for an empty one (diffusers does so when no `negative_prompt` is passed; persona treats ""
    /// as not passed), otherwise [`Self::encode_text`].
    pub fn encode_negative(&self, prompts: &[&str], output: Output) -> Result<TextEncoding> {
        self.encode_negative_with_tokens(prompts, &[], output)
    }

    /// [`Self::encode_negative`] of a negative prompt that may use learned tokens.
    pub fn encode_negative_with_tokens(
        &self,
        prompts: &[&str],
        learned: &[super::LearnedTokens],
        output: Output,
    ) -> Result<TextEncoding> {
        let zeros = self
            .sdxl
            .as_ref()
            .is_some_and(|x| x.force_zeros_for_empty_prompt)
            && prompts.iter().all(|p| p.is_empty());
        if !zeros {
            return self.encode_text_with_tokens(prompts, learned, output);
        }
        let x = self.sdxl.as_ref().expect("checked above");
        let n = prompts.len();
        let width =
            self.text_encoder.config().hidden_size + x.text_encoder_2.model.config().hidden_size;
        let len = self.tokenizer.max_length();
        Ok(TextEncoding {
            embeds: Tensor::zeros((n, len, width), DType::F32, &self.device)?,
            pooled: Some(Tensor::zeros(
                (n, x.text_encoder_2.projection_dim()),
                DType::F32,
                &self.device,
            )?),
        })
    }

    /// SDXL's added conditioning for `rows` UNet rows: `pooled` `[rows, P]` and the micro-conditioning time
    /// ids of a `height` × `width` image; `None` for SD 1.x/2.x.
    pub fn added_cond(
        &self,
        pooled: Option<&Tensor>,
        micro: &MicroConditioning,
        height: usize,
        width: usize,
    ) -> Result<Option<AddedCond>> {
        if self.sdxl.is_none() {
            return Ok(None);
        }
        let text_embeds = pooled
            .ok_or_else(|| Error::Msg("SDXL needs the pooled text embeddings".into()))?
            .clone();
        let rows = text_embeds.dim(0)?;
        let ids = Tensor::new(&micro.time_ids(height, width), &self.device)?
            .unsqueeze(0)?
            .repeat((rows, 1))?;
        Ok(Some(AddedCond {
            text_embeds,
            time_ids: ids,
        }))
    }
}
