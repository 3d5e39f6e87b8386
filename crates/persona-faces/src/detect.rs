//! What a detector returns, and the detector interface.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One detected face in image pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// `[x1, y1, x2, y2]`; may extend past the image border for faces cut by it.
    pub bbox: [f32; 4],
    /// Detector confidence in 0..=1.
    pub score: f32,
    /// Left eye, right eye, nose tip, left mouth corner, right mouth corner, as `[x, y]`.
    /// "Left" is the image left (the subject's right eye), as in MTCNN and insightface.
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// Box width.
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }

    /// Box height.
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }

    /// Box area, used to pick the main subject of a photo.
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }
}

/// The face with the largest box (ties: higher score), the photo's main subject.
pub fn largest(faces: &[Face]) -> Option<Face> {
    faces.iter().copied().max_by(|a, b| {
        a.area()
            .total_cmp(&b.area())
            .then(a.score.total_cmp(&b.score))
    })
}

/// A face detector producing boxes with 5 landmarks.
pub trait Detector: Send + Sync {
    /// Short name for logs and reports ("mtcnn", "scrfd", "none (whole image)").
    fn name(&self) -> &'static str;
    /// All faces found, best score first. An image with no face gives an empty list.
    fn detect(&self, img: &RgbImage) -> Result<Vec<Face>>;
    /// `true` for [`crate::WholeImage`] (`--detector none`): the one "face" is the image's centred
    /// square, cropped by resizing rather than by alignment.
    fn whole_image(&self) -> bool {
        false
    }
}
