//! Loading photos into the one pixel format the pipeline works on: 8-bit RGB.
//!
//! Training photos come from phones and the web, so the loader must cope with what they contain:
//! EXIF orientation (a portrait phone JPEG is stored sideways; a detector run on the stored
//! pixels sees a rotated face and usually misses it), grayscale scans, RGBA cut-outs and 16-bit
//! PNGs. Everything is normalised here once so the detectors and recognisers only see RGB8.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{FaceError, Result};

/// Reads an image file, applies its EXIF orientation and converts it to RGB8 (see [`to_rgb`]).
///
/// Errors name the file: unreadable, undecodable, or zero-sized.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let io_err = |err| FaceError::Io {
        path: path.to_path_buf(),
        err,
    };
    let decode_err = |err| FaceError::Decode {
        path: path.to_path_buf(),
        err,
    };
    let reader = ImageReader::open(path)
        .map_err(io_err)?
        .with_guessed_format()
        .map_err(io_err)?;
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    // A broken EXIF block must not make an otherwise fine photo unreadable: treat it as upright.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(FaceError::EmptyImage {
            path: path.to_path_buf(),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(to_rgb(&img))
}

/// Converts any decoded image to RGB8.
///
/// Images with an alpha channel are composited over white: the colour of fully transparent
/// pixels is undefined (often black), and a portrait cut out on a white background is what such
/// files usually are. 16-bit channels are rounded to 8 bits; grayscale is replicated to RGB.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba32f();
    let mut out = RgbImage::new(img.width(), img.height());
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3].clamp(0.0, 1.0);
        for c in 0..3 {
            let v = src[c].clamp(0.0, 1.0) * a + (1.0 - a);
            dst[c] = (v * 255.0).round() as u8;
        }
    }
    out
}

/// An RGB image with `f32` samples in 0..=255, row-major HWC.
///
/// Detection resamples the image many times (pyramid levels, per-candidate crops); doing that in
/// floating point avoids rounding at every step, as the reference implementations (numpy) do.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageF32 {
    pub width: usize,
    pub height: usize,
    /// `height * width * 3` samples.
    pub data: Vec<f32>,
}

impl ImageF32 {
    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height * 3],
        }
    }

    /// Copies an RGB8 image.
    pub fn from_rgb(img: &RgbImage) -> Self {
        Self {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw().iter().map(|&v| v as f32).collect(),
        }
    }

    /// Rounds and clamps back to RGB8.
    pub fn to_rgb(&self) -> RgbImage {
        let raw = self
            .data
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        RgbImage::from_raw(self.width as u32, self.height as u32, raw)
            .expect("buffer length is width * height * 3 by construction")
    }

    /// Sample `c` of pixel `(x, y)`.
    #[inline]
    pub fn at(&self, x: usize, y: usize, c: usize) -> f32 {
        self.data[(y * self.width + x) * 3 + c]
    }

    /// The rectangle with top-left `(x0, y0)` and size `w`×`h`; parts outside the image are 0.
    ///
    /// MTCNN's refinement stages crop candidate boxes that overhang the border this way.
    pub fn crop_padded(&self, x0: i64, y0: i64, w: usize, h: usize) -> ImageF32 {
        let mut out = ImageF32::zeros(w, h);
        let (iw, ih) = (self.width as i64, self.height as i64);
        let xs = x0.max(0);
        let xe = (x0 + w as i64).min(iw);
        if xs >= xe {
            return out;
        }
        for oy in 0..h {
            let sy = y0 + oy as i64;
            if sy < 0 || sy >= ih {
                continue;
            }
            let src = ((sy * iw + xs) * 3) as usize;
            let dst = ((oy as i64 * w as i64 + (xs - x0)) * 3) as usize;
            let n = ((xe - xs) * 3) as usize;
            out.data[dst..dst + n].copy_from_slice(&self.data[src..src + n]);
        }
        out
    }
}
