//! Scoring images: faces found, identity similarity to the references, CLIP prompt score.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{bail, Context, Error, Result};
use candle_core::Device;
use image::RgbImage;
use persona_faces::{cosine, DetectorChoice, FaceAnalyzer, ModelSearch};

use crate::clip::ClipScorer;

/// The CLIP model the protocol names.
pub const CLIP_DEFAULT: &str = "openai/clip-vit-base-patch32";

/// The scores of one image before it becomes a record.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageScore {
    pub faces: usize,
    pub id: Option<f64>,
    pub id_each: Vec<f64>,
    pub prompt_score: Option<f64>,
    /// Mean `1 − cos` between this image's face embedding and those of the other images scored with it.
    pub diversity: Option<f64>,
}

/// Face models, the optional CLIP model, and the prompt embeddings already computed.
pub struct Scorer {
    faces: FaceAnalyzer,
    clip: Option<ClipScorer>,
    /// Round-trip every image through JPEG quality 75 first (as Celeb Basis did).
    jpeg: bool,
    /// What the report names as the recogniser (detector + recogniser files).
    pub recognizer: String,
    /// The CLIP folder's name, or `None` when prompt scores are missing.
    pub clip_name: Option<String>,
    text_cache: Mutex<HashMap<String, candle_core::Tensor>>,
}

impl Scorer {
    /// Loads the face models from `search` and CLIP from `clip` (or the usual places; missing is allowed).
    pub fn load(search: &ModelSearch, clip: Option<&Path>, jpeg: bool) -> Result<Self> {
        let faces =
            FaceAnalyzer::from_search(search).context("face models (needed for the ID score)")?;
        let recognizer = describe_face_models(search)?;
        let clip_dir = find_clip(clip, search)?;
        let clip_name = clip_dir.as_ref().map(|d| clip_label(d));
        let clip = match &clip_dir {
            Some(d) => Some(
                ClipScorer::load(d, &Device::Cpu)
                    .with_context(|| format!("{}: CLIP model", d.display()))?,
            ),
            None => {
                tracing::warn!("no CLIP model found (--clip, $PERSONA_MODELS/clip-vit-base-patch32 or the Hugging Face cache): prompt scores are reported as missing");
                None
            }
        };
        Ok(Self {
            faces,
            clip,
            jpeg,
            recognizer,
            clip_name,
            text_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The reference identity: the mean of the normalised embeddings of the largest face in each photo of `dir`.
    pub fn reference(&self, dir: &Path) -> Result<Vec<f32>> {
        let photos = persona_train::data::list_images(dir).map_err(Error::from)?;
        let mut sum: Vec<f32> = Vec::new();
        let mut used = 0;
        for p in &photos {
            let img = persona_faces::load_rgb(p).map_err(Error::from)?;
            match self
                .faces
                .embed_largest(&img)
                .map_err(|e| Error::file(p, e))?
            {
                Some((_, e)) => {
                    sum.resize(e.len(), 0.0);
                    sum.iter_mut().zip(&e).for_each(|(s, x)| *s += x);
                    used += 1;
                }
                None => {
                    tracing::warn!(file = %p.display(), "no face found; not used as a reference")
                }
            }
        }
        if used == 0 {
            bail!(
                "{}: no reference photo with a detectable face ({} photos)",
                dir.display(),
                photos.len()
            );
        }
        Ok(sum.into_iter().map(|s| s / used as f32).collect())
    }

    /// Scores images of one prompt. `refs[0]` is the `{}` identity; with a second entry (double prompts) each
    /// identity is compared with its best-matching face, otherwise the largest face is compared with `refs[0]`.
    pub fn score(
        &self,
        images: &[RgbImage],
        refs: &[&[f32]],
        clip_text: &str,
    ) -> Result<Vec<ImageScore>> {
        let images: Vec<RgbImage> = if self.jpeg {
            images.iter().map(jpeg_round_trip).collect::<Result<_>>()?
        } else {
            images.to_vec()
        };
        let prompt = self.prompt_scores(&images, clip_text)?;
        let scored = images
            .iter()
            .zip(prompt)
            .map(|(img, prompt_score)| self.face_scores(img, refs, prompt_score))
            .collect::<Result<Vec<_>>>()?;
        let embeddings: Vec<Option<Vec<f32>>> = scored.iter().map(|(_, e)| e.clone()).collect();
        Ok(scored
            .into_iter()
            .enumerate()
            .map(|(i, (s, _))| ImageScore {
                diversity: diversity(&embeddings, i),
                ..s
            })
            .collect())
    }

    /// The image's scores and the embedding of its `{}` face (the largest face, or for double prompts the face
    /// that best matches the first identity).
    fn face_scores(
        &self,
        img: &RgbImage,
        refs: &[&[f32]],
        prompt_score: Option<f64>,
    ) -> Result<(ImageScore, Option<Vec<f32>>)> {
        let faces = self.faces.detect(img).map_err(Error::from)?;
        let (id, id_each, embedding) = if faces.is_empty() {
            (None, vec![], None)
        } else if refs.len() == 1 {
            let face = persona_faces::largest(&faces).expect("not empty");
            let e = self.faces.embed(img, &face).map_err(Error::from)?;
            (Some(cosine(&e, refs[0]) as f64), vec![], Some(e))
        } else {
            let embeds = faces
                .iter()
                .map(|f| self.faces.embed(img, f))
                .collect::<persona_faces::Result<Vec<_>>>()
                .map_err(Error::from)?;
            let best = |r: &[f32]| {
                embeds
                    .iter()
                    .map(|e| (cosine(e, r) as f64, e))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .expect("not empty")
            };
            let each: Vec<f64> = refs.iter().map(|r| best(r).0).collect();
            let first = best(refs[0]).1.clone();
            (
                Some(each.iter().sum::<f64>() / each.len() as f64),
                each,
                Some(first),
            )
        };
        Ok((
            ImageScore {
                faces: faces.len(),
                id,
                id_each,
                prompt_score,
                diversity: None,
            },
            embedding,
        ))
    }

    fn prompt_scores(&self, images: &[RgbImage], text: &str) -> Result<Vec<Option<f64>>> {
        let Some(clip) = &self.clip else {
            return Ok(vec![None; images.len()]);
        };
        let text_embed = {
            let mut cache = self.text_cache.lock().expect("not poisoned");
            match cache.get(text) {
                Some(t) => t.clone(),
                None => {
                    let t = clip.text_embeds(&[text])?;
                    cache.insert(text.to_string(), t.clone());
                    t
                }
            }
        };
        let scores = crate::clip::cosine(&clip.image_embeds(images)?, &text_embed)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(scores.into_iter().map(|s| Some(s as f64)).collect())
    }
}

/// Image `i`'s mean `1 − cos` to every other image with a face; `None` without a face or a second one. Averaged
/// over the images of a prompt this is the mean pairwise diversity the spec names: how different the faces
/// a prompt produced are from each other (a method that always draws the same face scores 0).
pub fn diversity(embeddings: &[Option<Vec<f32>>], i: usize) -> Option<f64> {
    let own = embeddings[i].as_ref()?;
    let others: Vec<f64> = embeddings
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .filter_map(|(_, e)| e.as_ref())
        .map(|e| 1.0 - cosine(own, e) as f64)
        .collect();
    (!others.is_empty()).then(|| others.iter().sum::<f64>() / others.len() as f64)
}

/// Encodes at JPEG quality 75 and decodes again.
pub fn jpeg_round_trip(img: &RgbImage) -> Result<RgbImage> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 75).encode_image(img)?;
    Ok(image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)?.to_rgb8())
}

/// `mtcnn + facenet_inception_resnet_v1_160.onnx`: file names only, so results from different machines match;
/// `none (whole image) + …` with `--detector none`.
fn describe_face_models(search: &ModelSearch) -> Result<String> {
    let det = match search.find_detector().map_err(Error::from)? {
        DetectorChoice::Scrfd(p) => file_name(&p),
        DetectorChoice::Mtcnn(_) => "mtcnn".to_string(),
        DetectorChoice::WholeImage => persona_faces::WholeImage::NAME.to_string(),
    };
    let rec = search.find_recognizer().map_err(Error::from)?;
    Ok(format!("{det} + {}", file_name(&rec.path)))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The folder name, or the hub id for a Hugging Face cache snapshot.
fn clip_label(dir: &Path) -> String {
    let parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.iter().rposition(|p| p == "snapshots") {
        Some(i) if i >= 1 => parts[i - 1]
            .trim_start_matches("models--")
            .replacen("--", "/", 1),
        _ => file_name(dir),
    }
}

/// `--clip`, else `clip-vit-base-patch32/` in the face-model folders (`--models`, `$PERSONA_MODELS`,
/// `~/.cache/persona/models`), else the Hugging Face cache. `None` when there is none.
pub fn find_clip(explicit: Option<&Path>, search: &ModelSearch) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        if !p.join("config.json").is_file() {
            bail!(
                "--clip {}: no config.json (expected a transformers CLIP folder)",
                p.display()
            );
        }
        return Ok(Some(p.to_path_buf()));
    }
    let name = CLIP_DEFAULT.split('/').next_back().expect("has a name");
    let local = search.search_dirs().into_iter().map(|d| d.join(name));
    Ok(local
        .chain(hub_snapshots())
        .find(|d| d.join("config.json").is_file() && d.join("model.safetensors").is_file()))
}

/// `models--openai--clip-vit-base-patch32/snapshots/<rev>` for `refs/main` in each Hugging Face cache.
fn hub_snapshots() -> Vec<PathBuf> {
    let mut caches = Vec::new();
    caches.extend(std::env::var_os("HF_HUB_CACHE").map(PathBuf::from));
    caches.extend(std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")));
    caches
        .extend(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")));
    let repo = format!("models--{}", CLIP_DEFAULT.replace('/', "--"));
    caches
        .into_iter()
        .filter_map(|c| {
            let r = c.join(&repo);
            let rev = std::fs::read_to_string(r.join("refs/main")).ok()?;
            Some(r.join("snapshots").join(rev.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_labels() {
        assert_eq!(
            clip_label(Path::new(
                "/c/hub/models--openai--clip-vit-base-patch32/snapshots/abc"
            )),
            CLIP_DEFAULT
        );
        assert_eq!(clip_label(Path::new("fixtures/clip-tiny")), "clip-tiny");
    }

    #[test]
    fn diversity_is_mean_one_minus_cosine_to_the_other_faces() {
        let e = |v: [f32; 2]| Some(v.to_vec());
        let set = [e([1.0, 0.0]), e([1.0, 0.0]), e([0.0, 1.0]), None];
        // Image 0: 1 − 1 against image 1, 1 − 0 against image 2; the faceless image does not count.
        assert!((diversity(&set, 0).unwrap() - 0.5).abs() < 1e-12);
        assert!((diversity(&set, 2).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(diversity(&set, 3), None);
        assert_eq!(
            diversity(&[e([1.0, 0.0]), None], 0),
            None,
            "one face alone has nothing to differ from"
        );
    }
}
