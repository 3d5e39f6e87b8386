//! `CLIPImageProcessor` as the PIL backend of transformers 5.23 runs it (the same pixels as transformers 4's
//! `CLIPImageProcessor` and OpenAI's `clip.load` preprocessing): resize the shortest side to `shortest_edge` with
//! Pillow's bicubic filter (the other side `floor(edge·long/short)`), centre-crop, scale by 1/255, normalise with the
//! CLIP mean and std.
//!
//! transformers 5 picks its torchvision backend instead when torchvision is installed; that backend resizes in float
//! with torch's antialiased bicubic and gives slightly different pixels. The PIL path is the one CLIP was trained
//! with, so it is the one reproduced here (bit-exactly: see `docs/clip.md`).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use persona_diffusion::nn::read_json;
use persona_diffusion::{Error, Result};

use super::resample::resize_bicubic;

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`, kept as the f64 literals Python holds; numpy rounds them
/// to f32 when it normalises, and so does [`Preprocessor`] (rounding the decimal straight to f32 could differ).
const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// PIL's resampling code for bicubic, the only filter implemented.
const PIL_BICUBIC: u32 = 3;

/// The preprocessing settings of a CLIP model.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessor {
    /// Target length of the shorter image side before cropping.
    pub shortest_edge: u32,
    /// Centre-crop height and width: the model's input size.
    pub crop: (u32, u32),
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub rescale_factor: f64,
}

impl Preprocessor {
    /// The openai CLIP settings for input size `image_size` (224 for ViT-B/32).
    pub fn openai(image_size: u32) -> Self {
        Self {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            mean: OPENAI_CLIP_MEAN.map(|v| v as f32),
            std: OPENAI_CLIP_STD.map(|v| v as f32),
            rescale_factor: 1.0 / 255.0,
        }
    }

    /// Reads `preprocessor_config.json` of a model folder when it has one, else [`Preprocessor::openai`] for the
    /// vision tower's `image_size` (what `CLIPImageProcessor` defaults to). Settings this implementation does not
    /// reproduce (another filter, disabled steps, fixed-size resizing) are errors naming the file.
    pub fn from_dir(dir: &Path, image_size: u32) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(Self::openai(image_size));
        }
        let file: ProcessorFile = read_json(&path)?;
        file.into_preprocessor(image_size)
            .map_err(|msg| Error::file(&path, msg))
    }

    /// Resize and centre crop: the 8-bit image the model's input is made from (`crop` sized).
    pub fn resize_and_crop(&self, image: &RgbImage) -> Result<RgbImage> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 || self.shortest_edge == 0 {
            return Err(Error::Msg(format!(
                "cannot preprocess a {w}×{h} image to {}",
                self.shortest_edge
            )));
        }
        let (new_w, new_h) = shortest_edge_size(w, h, self.shortest_edge);
        let resized = resize_bicubic(
            image.as_raw(),
            w as usize,
            h as usize,
            new_w as usize,
            new_h as usize,
        );
        Ok(self.center_crop(&resized, new_w, new_h))
    }

    /// transformers' `center_crop`: offsets `(size − crop) // 2`, zero padding where the image is smaller.
    fn center_crop(&self, data: &[u8], w: u32, h: u32) -> RgbImage {
        let (ch, cw) = self.crop;
        let top = (i64::from(h) - i64::from(ch)).div_euclid(2);
        let left = (i64::from(w) - i64::from(cw)).div_euclid(2);
        RgbImage::from_fn(cw, ch, |x, y| {
            let (sx, sy) = (left + i64::from(x), top + i64::from(y));
            if (0..i64::from(w)).contains(&sx) && (0..i64::from(h)).contains(&sy) {
                let p = (sy as usize * w as usize + sx as usize) * 3;
                image::Rgb([data[p], data[p + 1], data[p + 2]])
            } else {
                image::Rgb([0, 0, 0])
            }
        })
    }

    /// Rescale and normalise an 8-bit image to `[3, H, W]` f32, with numpy's operation order and precisions
    /// (u8 → f64 × factor → f32, then `(x − mean) / std` in f32).
    pub fn normalize(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                let scaled = (f64::from(px[c]) * self.rescale_factor) as f32;
                out[c * plane + i] = (scaled - self.mean[c]) / self.std[c];
            }
        }
        Ok(Tensor::from_vec(out, (3, h as usize, w as usize), device)?)
    }

    /// The model input of one image: `[3, crop_h, crop_w]`.
    pub fn pixel_values(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        self.normalize(&self.resize_and_crop(image)?, device)
    }

    /// The model input of several images: `[B, 3, crop_h, crop_w]`.
    pub fn batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        let each = images
            .iter()
            .map(|im| self.pixel_values(im, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&each, 0)?)
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side becomes `edge`, the long
/// side `int(edge * long / short)` (float division, truncated).
fn shortest_edge_size(w: u32, h: u32, edge: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((u64::from(edge) * u64::from(long)) as f64 / f64::from(short)) as u32;
    if w <= h {
        (edge, new_long)
    } else {
        (new_long, edge)
    }
}

/// The fields of `preprocessor_config.json` that decide the pixels (old `CLIPFeatureExtractor` files give sizes as
/// plain integers, newer ones as objects).
#[derive(serde::Deserialize)]
struct ProcessorFile {
    size: Option<Size>,
    crop_size: Option<Size>,
    image_mean: Option<[f64; 3]>,
    image_std: Option<[f64; 3]>,
    resample: Option<u32>,
    rescale_factor: Option<f64>,
    do_resize: Option<bool>,
    do_center_crop: Option<bool>,
    do_rescale: Option<bool>,
    do_normalize: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Size {
    Square(u32),
    Dict {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

impl ProcessorFile {
    fn into_preprocessor(self, image_size: u32) -> std::result::Result<Preprocessor, String> {
        let steps = [
            self.do_resize,
            self.do_center_crop,
            self.do_rescale,
            self.do_normalize,
        ];
        if steps.contains(&Some(false)) {
            return Err(
                "disabled preprocessing steps (do_resize/do_center_crop/do_rescale/do_normalize) are not supported"
                    .into(),
            );
        }
        if let Some(r) = self.resample.filter(|r| *r != PIL_BICUBIC) {
            return Err(format!(
                "resample {r} is not supported (only {PIL_BICUBIC}, bicubic)"
            ));
        }
        let defaults = Preprocessor::openai(image_size);
        let shortest_edge = match self.size {
            None => defaults.shortest_edge,
            Some(Size::Square(n))
            | Some(Size::Dict {
                shortest_edge: Some(n),
                ..
            }) => n,
            Some(Size::Dict { .. }) => {
                return Err("`size` without `shortest_edge` is not supported".into())
            }
        };
        let crop = match self.crop_size {
            None => defaults.crop,
            Some(Size::Square(n)) => (n, n),
            Some(Size::Dict {
                height: Some(h),
                width: Some(w),
                ..
            }) => (h, w),
            Some(Size::Dict { .. }) => return Err("`crop_size` needs `height` and `width`".into()),
        };
        Ok(Preprocessor {
            shortest_edge,
            crop,
            mean: self
                .image_mean
                .map_or(defaults.mean, |m| m.map(|v| v as f32)),
            std: self.image_std.map_or(defaults.std, |s| s.map(|v| v as f32)),
            rescale_factor: self.rescale_factor.unwrap_or(defaults.rescale_factor),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_size_follows_transformers() {
        assert_eq!(shortest_edge_size(256, 256, 224), (224, 224));
        assert_eq!(shortest_edge_size(300, 200, 224), (336, 224));
        assert_eq!(shortest_edge_size(200, 311, 224), (224, 348));
        assert_eq!(shortest_edge_size(40, 300, 224), (224, 1680));
    }

    #[test]
    fn old_and_new_processor_files_parse() {
        let old: ProcessorFile = serde_json::from_str(
            r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#,
        )
        .unwrap();
        assert_eq!(
            old.into_preprocessor(224).unwrap(),
            Preprocessor::openai(224)
        );
        let new: ProcessorFile = serde_json::from_str(
            r#"{"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "resample": 3,
                "rescale_factor": 0.00392156862745098, "do_convert_rgb": true}"#,
        )
        .unwrap();
        assert_eq!(
            new.into_preprocessor(224).unwrap(),
            Preprocessor::openai(336)
        );
        let lanczos: ProcessorFile = serde_json::from_str(r#"{"resample": 1}"#).unwrap();
        assert!(lanczos
            .into_preprocessor(224)
            .unwrap_err()
            .contains("resample 1"));
    }
}
