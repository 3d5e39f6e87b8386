//! The identity's face embedding `a`: every training photo → detect → align → recognise → L2-normalise,
//! averaged over the photos and normalised again. Photos without a face are skipped with a warning; a folder
//! without any face is an error (ID-EA needs the embedding; the released code instead embedded one fixed,
//! unaligned, wrongly normalised image for every identity).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::data::{list_images, load_rgb};
use crate::{Error, Result};

/// The largest face of a photo, embedded and L2-normalised by a recogniser; `None` when there is no face.
/// Supplied by the caller (the faces crate in the CLI), so training does not depend on a face model.
pub type FaceEmbedder<'a> = dyn Fn(&RgbImage) -> Result<Option<Vec<f32>>> + 'a;

/// The mean face embedding of the photos in `dir` (normalised), and how many photos had a face.
pub fn identity_embedding(
    dir: &Path,
    embed: &FaceEmbedder,
    device: &Device,
) -> Result<(Tensor, usize)> {
    let mut sum: Vec<f64> = Vec::new();
    let mut used = 0;
    for path in list_images(dir)? {
        let img = load_rgb(&path)?;
        let Some(v) = embed(&img).map_err(|e| Error::file(&path, e))? else {
            tracing::warn!(file = %path.display(), "no face found; not used for the face embedding");
            continue;
        };
        if sum.is_empty() {
            sum = vec![0.0; v.len()];
        } else if sum.len() != v.len() {
            return Err(Error::file(
                &path,
                format!(
                    "embedding has {} values, earlier photos {}",
                    v.len(),
                    sum.len()
                ),
            ));
        }
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(Error::file(
                &path,
                "the recogniser returned a zero or non-finite embedding",
            ));
        }
        sum.iter_mut()
            .zip(&v)
            .for_each(|(s, x)| *s += *x as f64 / norm);
        used += 1;
    }
    if used == 0 {
        return Err(Error::file(
            dir,
            "no face found in any photo: ID-EA needs the person's face embedding",
        ));
    }
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    let mean: Vec<f32> = sum.iter().map(|x| (x / norm) as f32).collect();
    let n = mean.len();
    Ok((Tensor::from_vec(mean, n, device)?, used))
}
