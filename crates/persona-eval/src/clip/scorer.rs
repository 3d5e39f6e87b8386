//! A CLIP model folder ready to score images against prompts: model, tokenizer and preprocessing together.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use persona_diffusion::tokenizer::ClipTokenizer;
use persona_diffusion::{Error, Result};

use super::{cosine, ClipModel, Preprocessor};

pub struct ClipScorer {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    preprocessor: Preprocessor,
    device: Device,
}

impl ClipScorer {
    /// Loads a transformers CLIP folder (`openai/clip-vit-base-patch32` layout): `config.json`,
    /// `model.safetensors`, the tokenizer files (`vocab.json` + `merges.txt`, or `tokenizer.json`) and, when
    /// present, `preprocessor_config.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipModel::load(dir, device)?;
        let tokenizer = ClipTokenizer::from_dir(dir)
            .map_err(|e| Error::file(dir, format!("tokenizer: {e}")))?;
        let image_size = model.config().vision_config.image_size as u32;
        let preprocessor = Preprocessor::from_dir(dir, image_size)?;
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
            device: device.clone(),
        })
    }

    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// Token ids `[B, L]` padded with the pad id to the longest prompt, as `CLIPProcessor(…, padding=True)`;
    /// prompts longer than the text tower are truncated to it (EOS kept) where transformers would fail.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tensor> {
        let rows = prompts
            .iter()
            .map(|p| self.tokenizer.encode_unpadded(p))
            .collect::<Result<Vec<_>>>()?;
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let flat: Vec<u32> = rows
            .into_iter()
            .flat_map(|mut r| {
                r.resize(longest, self.tokenizer.pad_id());
                r
            })
            .collect();
        Ok(Tensor::from_vec(
            flat,
            (prompts.len(), longest),
            &self.device,
        )?)
    }

    /// Normalised embeddings of RGB images, `[N, projection_dim]`.
    pub fn image_embeds(&self, images: &[RgbImage]) -> Result<Tensor> {
        self.model
            .image_embeds(&self.preprocessor.batch(images, &self.device)?)
    }

    /// Normalised embeddings of prompts, `[N, projection_dim]`.
    pub fn text_embeds(&self, prompts: &[&str]) -> Result<Tensor> {
        self.model.text_embeds(&self.tokenize(prompts)?)
    }

    /// The prompt score of one image: cosine of its embedding with the prompt's.
    pub fn score(&self, image: &RgbImage, prompt: &str) -> Result<f32> {
        let c = cosine(
            &self.image_embeds(std::slice::from_ref(image))?,
            &self.text_embeds(&[prompt])?,
        )?;
        Ok(c.flatten_all()?.to_vec1::<f32>()?[0])
    }
}
