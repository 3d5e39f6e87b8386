//! Loading photos into the one pixel format the pipeline works on: 8-bit RGB.
//!
//! Training photos come from phones and the web, so the loader must cope with what they contain:
//! EXIF orientation (a portrait phone JPEG is stored sideways; a detector run on the stored
//! pixels sees a rotated face and usually misses it), grayscale scans, RGBA cut-outs and 16-bit
//! PNGs. Everything is normalised here once so the detectors and recognisers only see RGB8.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{FaceError, Result};

/// The largest image side read, in pixels (a 16384² RGB image is 768 MiB decoded).
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// The most pixels an image may have: 100 megapixels (phone cameras: 12–50; 16-bit RGBA: 800 MB).
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// The decoder limits every image read uses: a small file that declares a huge size (a "decompression
/// bomb") is refused from its header, before any pixel buffer is allocated.
pub fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8);
    limits
}

/// Reads an image file, applies its EXIF orientation and converts it to RGB8 (see [`to_rgb`]).
///
/// Errors name the file: unreadable, undecodable, truncated (a JPEG without its end marker: decoders fill
/// the missing part with grey), larger than [`MAX_IMAGE_SIDE`] / [`MAX_IMAGE_PIXELS`] (checked from the
/// header, before decoding), or zero-sized.
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
    if reader.format() == Some(ImageFormat::Jpeg) {
        let bytes = std::fs::read(path).map_err(io_err)?;
        if !jpeg_is_complete(&bytes) {
            return Err(FaceError::Truncated {
                path: path.to_path_buf(),
            });
        }
    }
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(FaceError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    decoder.set_limits(decode_limits()).map_err(decode_err)?;
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

/// Whether a JPEG's bytes reach its end-of-image marker: walks the marker segments up to each scan, skips
/// the entropy-coded data (where 0xFF is always followed by 0x00 or a restart marker) and looks for EOI. A
/// file cut short (an interrupted download or copy) has none; the decoders fill the rest with grey silently.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = b[i + 1];
        match marker {
            0xD9 => return true,
            0xFF | 0x00 | 0x01 | 0xD0..=0xD7 => i += if marker == 0xFF { 1 } else { 2 },
            _ => {
                if i + 3 >= b.len() {
                    return false;
                }
                let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                i += 2 + len;
                if marker == 0xDA {
                    // Entropy-coded data up to the next marker that is not a stuffed byte or a restart.
                    while i + 1 < b.len()
                        && (b[i] != 0xFF || matches!(b[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF))
                    {
                        i += 1;
                    }
                }
            }
        }
    }
    false
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
