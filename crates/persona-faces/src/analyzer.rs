//! [`FaceAnalyzer`]: a loaded detector and recogniser, the API training and evaluation call.

use image::RgbImage;

use crate::align::aligned_crop;
use crate::detect::{largest, Detector, Face};
use crate::error::Result;
use crate::models::ModelSearch;
use crate::recognize::{box_crop, Recognizer};

/// A detector plus a recogniser, loaded once and reused for every image (thread-safe).
pub struct FaceAnalyzer {
    detector: Box<dyn Detector>,
    recognizer: Box<dyn Recognizer>,
}

impl std::fmt::Debug for FaceAnalyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceAnalyzer")
            .field("detector", &self.detector.name())
            .field("recognizer", &self.recognizer.kind())
            .finish()
    }
}

impl FaceAnalyzer {
    /// Bundles already loaded models.
    pub fn new(detector: Box<dyn Detector>, recognizer: Box<dyn Recognizer>) -> Self {
        Self {
            detector,
            recognizer,
        }
    }

    /// Finds and loads both models (see [`crate::models`]).
    pub fn from_search(search: &ModelSearch) -> Result<Self> {
        let detector = search.load_detector()?;
        let recognizer = search.load_recognizer()?;
        Ok(Self::new(detector, Box::new(recognizer)))
    }

    /// The detector.
    pub fn detector(&self) -> &dyn Detector {
        self.detector.as_ref()
    }

    /// The recogniser.
    pub fn recognizer(&self) -> &dyn Recognizer {
        self.recognizer.as_ref()
    }

    /// All faces, best score first.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        self.detector.detect(img)
    }

    /// The face with the largest box, `None` when there is no face.
    pub fn largest_face(&self, img: &RgbImage) -> Result<Option<Face>> {
        Ok(largest(&self.detector.detect(img)?))
    }

    /// The `size`×`size` ArcFace-aligned crop of `face`; with the whole-image detector
    /// (`--detector none`) the face's box resized instead, i.e. the plain resize of the image's
    /// centred square (see [`crate::whole`] for why not the alignment).
    pub fn aligned_crop(&self, img: &RgbImage, face: &Face, size: u32) -> Result<RgbImage> {
        if self.detector.whole_image() {
            return box_crop(img, face.bbox, 0.0, size);
        }
        aligned_crop(img, &face.landmarks, size)
    }

    /// L2-normalised embedding of `face`, cropped the way the recogniser wants.
    pub fn embed(&self, img: &RgbImage, face: &Face) -> Result<Vec<f32>> {
        self.recognizer.embed(img, face)
    }

    /// The largest face and its embedding, `None` when there is no face.
    pub fn embed_largest(&self, img: &RgbImage) -> Result<Option<(Face, Vec<f32>)>> {
        match self.largest_face(img)? {
            Some(f) => Ok(Some((f, self.embed(img, &f)?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Training and evaluation share one analyzer across threads.
    #[test]
    fn analyzer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::FaceAnalyzer>();
        check::<crate::Mtcnn>();
        check::<crate::Scrfd>();
        check::<crate::OnnxRecognizer>();
        check::<crate::WholeImage>();
    }
}
