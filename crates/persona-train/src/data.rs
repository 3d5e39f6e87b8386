//! Training photos → square, face-centred training images.
//!
//! Every image file of the folder is read (jpg, png, webp; other files are ignored; none is an error), turned
//! upright (EXIF), cropped to a square around the detected face with a margin — or, without a face or a
//! detector, the largest centred square (never stretched) — and resized with a Lanczos filter.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::{imageops::FilterType, RgbImage};

use crate::{Error, Result};

/// Finds the main face of a photo: `(x0, y0, x1, y1)` in pixels. Supplied by the caller (the faces crate's
/// detector in the CLI), so training itself does not depend on a detector.
pub type FaceLocator<'a> = dyn Fn(&RgbImage) -> Option<[f32; 4]> + 'a;

const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// The image files of a folder, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::file(
            dir,
            format!("no training images (looked for {})", EXTENSIONS.join(", ")),
        ));
    }
    Ok(files)
}

/// Decodes an image, applying its EXIF orientation, with the faces crate's loader: its size limits (a
/// "decompression bomb" is refused before decoding) and its truncation check.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    Ok(persona_faces::load_rgb(path)?)
}

/// The square to crop: around the face (side = 2× the face's larger side, kept inside the image) or the
/// largest centred square.
pub fn crop_square(width: u32, height: u32, face: Option<[f32; 4]>) -> (u32, u32, u32) {
    let max_side = width.min(height);
    let Some([x0, y0, x1, y1]) = face else {
        return ((width - max_side) / 2, (height - max_side) / 2, max_side);
    };
    let side = ((x1 - x0).max(y1 - y0) * 2.0)
        .round()
        .clamp(1.0, max_side as f32) as u32;
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let place =
        |c: f32, limit: u32| ((c - side as f32 / 2.0).round().max(0.0) as u32).min(limit - side);
    (place(cx, width), place(cy, height), side)
}

/// One training photo, cropped and resized, as `[3, R, R]` in [-1, 1] (unflipped and flipped).
pub struct Sample {
    pub path: PathBuf,
    pub pixels: [Tensor; 2],
    pub face_found: bool,
    /// The photo's size `(height, width)` before cropping and resizing (after its EXIF orientation).
    pub original_size: (u32, u32),
    /// The square that was cropped, `(left, top, side)` in the photo's pixels.
    pub crop: (u32, u32, u32),
}

impl Sample {
    /// A sample of given pixels (tests, probes): the photo is the `[3, R, R]` image itself, uncropped.
    pub fn from_pixels(pixels: Tensor) -> Result<Self> {
        let side = pixels.dim(2)? as u32;
        Ok(Self {
            path: "none".into(),
            pixels: [pixels.clone(), pixels.flip(&[2])?],
            face_found: false,
            original_size: (side, side),
            crop: (0, 0, side),
        })
    }

    /// SDXL's micro-conditioning time ids of this sample at `resolution`, as diffusers'
    /// `textual_inversion_sdxl.py` records them: `original_size` (the photo's size before resizing),
    /// `crop_top_left` (the crop's top-left corner in the resized photo: persona crops the square first and
    /// resizes it to `resolution`, which is cropping the photo resized by `resolution / side`), `target_size`
    /// (`resolution` square). The flip does not change them (the script flips after cropping).
    pub fn time_ids(&self, resolution: u32) -> [f32; 6] {
        let (h, w) = self.original_size;
        let (left, top, side) = self.crop;
        let scale = f64::from(resolution) / f64::from(side.max(1));
        let at = |v: u32| (f64::from(v) * scale).round() as f32;
        let r = resolution as f32;
        [h as f32, w as f32, at(top), at(left), r, r]
    }
}

/// Prepares every photo of `dir` at `resolution`.
pub fn load_folder(
    dir: &Path,
    resolution: u32,
    locate: Option<&FaceLocator>,
    device: &Device,
) -> Result<Vec<Sample>> {
    list_images(dir)?
        .into_iter()
        .map(|path| load_sample(path, resolution, locate, device))
        .collect()
}

fn load_sample(
    path: PathBuf,
    resolution: u32,
    locate: Option<&FaceLocator>,
    device: &Device,
) -> Result<Sample> {
    let img = load_rgb(&path)?;
    let face = locate.and_then(|f| f(&img));
    if locate.is_some() && face.is_none() {
        tracing::warn!(file = %path.display(), "no face found; using a centre crop");
    }
    let (x, y, side) = crop_square(img.width(), img.height(), face);
    let square = image::imageops::crop_imm(&img, x, y, side, side).to_image();
    let resized = image::imageops::resize(&square, resolution, resolution, FilterType::Lanczos3);
    let flipped = image::imageops::flip_horizontal(&resized);
    let to_tensor = |im: &RgbImage| -> Result<Tensor> {
        let data: Vec<f32> = im
            .as_raw()
            .iter()
            .map(|&v| v as f32 / 127.5 - 1.0)
            .collect();
        let r = resolution as usize;
        Ok(Tensor::from_vec(data, (r, r, 3), device)?
            .permute((2, 0, 1))?
            .contiguous()?)
    };
    Ok(Sample {
        pixels: [to_tensor(&resized)?, to_tensor(&flipped)?],
        face_found: face.is_some(),
        original_size: (img.height(), img.width()),
        crop: (x, y, side),
        path,
    })
}
