//! The unit of evaluation work: one method × identity × prompt — generate its images (image `i` from seed
//! `seed + i`), score them, store the records. A unit's folder holds `prompt.txt`, the PNGs and, once scored,
//! `records.json`; a re-run skips finished units and regenerates only missing images, so an interrupted run
//! resumes where it stopped.

use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use image::RgbImage;
use indicatif::ProgressBar;
use persona_diffusion::pipeline::image::{to_rgb8, write_atomic, write_png};
use persona_diffusion::pipeline::{expand_prompt, GenerateParams, StableDiffusion};
use persona_diffusion::schedulers::SchedulerKind;
use persona_identity::Identity;
use persona_identity::{AdapterUse, Applied};
use serde::{Deserialize, Serialize};

use crate::prompts::{clip_text, uses_second};
use crate::results::ImageRecord;
use crate::score::Scorer;

/// How images are sampled; the same for every method compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(default = "default_images")]
    pub images_per_prompt: usize,
    /// Sampler (`ddim`, `dpm++2m`, …); default the model's own.
    #[serde(default)]
    pub scheduler: Option<String>,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub negative_prompt: String,
    /// Square image size (default: the model's).
    #[serde(default)]
    pub resolution: Option<usize>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_images() -> usize {
    8
}
fn default_steps() -> usize {
    50
}
fn default_guidance() -> f64 {
    7.5
}
fn default_seed() -> u64 {
    42
}
fn default_batch() -> usize {
    1
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            images_per_prompt: default_images(),
            scheduler: None,
            steps: default_steps(),
            guidance: default_guidance(),
            seed: default_seed(),
            negative_prompt: String::new(),
            resolution: None,
            batch_size: default_batch(),
        }
    }
}

impl Sampling {
    pub fn scheduler_kind(&self) -> Result<Option<SchedulerKind>> {
        self.scheduler
            .as_deref()
            .map(|s| s.parse::<SchedulerKind>().map_err(Error::from))
            .transpose()
    }

    /// Progress ticks of one unit: a tick per denoising step and one per scored image.
    pub fn unit_ticks(&self) -> u64 {
        (self.images_per_prompt * (self.steps + 1)) as u64
    }
}

/// One method × identity × prompt.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unit {
    pub method: String,
    /// Index into the identity list; `{1}` is identity `(identity + 1) mod N`.
    pub identity: usize,
    pub class: String,
    pub prompt_index: usize,
    pub template: String,
    /// A comparison unit without identities: placeholders become this phrase (`--baseline "a person"`), so the
    /// same prompts show what the model draws without the identity.
    pub baseline: Option<String>,
}

/// The method label of baseline units.
pub const BASELINE: &str = "baseline";

impl Unit {
    /// `images/<method>/<identity>/<class>/<prompt index>`, relative to the output folder.
    pub fn rel_dir(&self, identity_names: &[String]) -> PathBuf {
        let id = identity_names[self.identity]
            .trim_matches(['<', '>'])
            .to_string();
        PathBuf::from("images")
            .join(&self.method)
            .join(id)
            .join(&self.class)
            .join(format!("{:02}", self.prompt_index))
    }

    /// The identities the prompt names: this unit's, then the `{1}` partner for double prompts.
    pub fn identities(&self, count: usize) -> Vec<usize> {
        if uses_second(&self.template) && count > 1 {
            vec![self.identity, (self.identity + 1) % count]
        } else {
            vec![self.identity]
        }
    }
}

/// What a unit needs besides itself.
pub struct UnitContext<'a> {
    pub sd: &'a StableDiffusion,
    pub sampling: &'a Sampling,
    pub scorer: &'a Scorer,
    /// Every identity's token (`<alice>`), in order.
    pub names: &'a [String],
    /// This method's identities, in the same order; only those the units need must be loaded.
    pub identities: &'a [Option<Identity>],
    /// Reference embeddings, one per identity.
    pub references: &'a [Vec<f32>],
    pub out: &'a Path,
    /// Records of a finished unit are reused only when stored under the same key (the settings' fingerprint).
    pub key: &'a str,
    pub bar: &'a ProgressBar,
    /// Whether ID-EA identities' adapters are applied (`train-only`: their tokens alone).
    pub adapter: AdapterUse,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    key: String,
    records: Vec<ImageRecord>,
}

/// Generates what is missing, scores, stores and returns the unit's records.
pub fn run_unit(cx: &UnitContext, unit: &Unit) -> Result<Vec<ImageRecord>> {
    let names = cx.names;
    let rel = unit.rel_dir(names);
    let dir = cx.out.join(&rel);
    let done = dir.join("records.json");
    if let Some(records) = stored_records(&done, cx.key)? {
        cx.bar.inc(cx.sampling.unit_ticks());
        return Ok(records);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    discard_stale(&dir, cx.key)?;
    write_atomic(&dir.join("prompt.txt"), unit.template.as_bytes())?;
    let order = unit.identities(names.len());
    generate_missing(cx, unit, &order, &dir)?;
    let n = cx.sampling.images_per_prompt;
    let images = (0..n)
        .map(|i| load_png(&dir.join(image_name(i))))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&[f32]> = order.iter().map(|&i| cx.references[i].as_slice()).collect();
    let scores = cx
        .scorer
        .score(&images, &refs, &clip_text(&unit.template, names))?;
    cx.bar.inc(n as u64);
    let records: Vec<ImageRecord> = scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| ImageRecord {
            method: unit.method.clone(),
            identity: names[unit.identity].clone(),
            second: order.get(1).map(|&j| names[j].clone()),
            class: unit.class.clone(),
            prompt_index: unit.prompt_index,
            prompt: unit.template.clone(),
            index: i,
            seed: Some(cx.sampling.seed + i as u64),
            file: rel.join(image_name(i)).to_string_lossy().replace('\\', "/"),
            faces: s.faces,
            id: s.id,
            id_each: s.id_each,
            prompt_score: s.prompt_score,
            diversity: s.diversity,
        })
        .collect();
    let stored = Stored {
        key: cx.key.to_string(),
        records,
    };
    write_atomic(&done, serde_json::to_string_pretty(&stored)?.as_bytes())?;
    Ok(stored.records)
}

/// Images in a unit folder are reused only if they were made under the current key (`key.txt`, written before
/// the first image): images of other settings are removed, so a changed setting never mixes old pictures in.
fn discard_stale(dir: &Path, key: &str) -> Result<()> {
    let marker = dir.join("key.txt");
    if std::fs::read_to_string(&marker).is_ok_and(|k| k == key) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "png")
            || path.file_name().is_some_and(|n| n == "records.json")
        {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    Ok(write_atomic(&marker, key.as_bytes())?)
}

pub fn image_name(i: usize) -> String {
    format!("{i:04}.png")
}

/// The records of a finished unit (`records.json` in its folder) with the same key, `None` when unfinished or
/// made with other settings.
pub fn stored_records(path: &Path, key: &str) -> Result<Option<Vec<ImageRecord>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let stored: Stored = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a unit record file", path.display()))?;
    Ok((stored.key == key).then_some(stored.records))
}

fn load_png(path: &Path) -> Result<RgbImage> {
    persona_faces::load_rgb(path).map_err(Error::from)
}

/// Generates the missing images in contiguous runs (image `i` always has seed `seed + i`, so the result does
/// not depend on what was already there).
fn generate_missing(cx: &UnitContext, unit: &Unit, order: &[usize], dir: &Path) -> Result<()> {
    let s = cx.sampling;
    let missing: Vec<usize> = (0..s.images_per_prompt)
        .filter(|&i| !dir.join(image_name(i)).is_file())
        .collect();
    cx.bar
        .inc(((s.images_per_prompt - missing.len()) * s.steps) as u64);
    let chosen = match &unit.baseline {
        Some(_) => Vec::new(),
        None => order
            .iter()
            .map(|&i| {
                cx.identities[i]
                    .clone()
                    .with_context(|| format!("identity {} is not loaded", cx.names[i]))
            })
            .collect::<Result<Vec<Identity>>>()?,
    };
    // ID-EA identities carry adapters; generation applies them as `persona generate` does.
    let mut applied = Applied::new(cx.sd, &chosen, cx.adapter, s.guidance > 1.0)?;
    if let Some(phrase) = &unit.baseline {
        applied.names = order
            .iter()
            .map(|&i| (cx.names[i].clone(), phrase.clone()))
            .collect();
    }
    let prompt = expand_prompt(&unit.template, &applied.names)?;
    let control = applied.control();
    let size = s.resolution.unwrap_or_else(|| cx.sd.default_size());
    for run in contiguous(&missing) {
        let params = GenerateParams {
            prompt: prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            steps: s.steps,
            guidance: s.guidance,
            scheduler: s.scheduler_kind()?,
            height: size,
            width: size,
            seed: s.seed + run[0] as u64,
            num_images: run.len(),
            batch_size: s.batch_size.max(1),
            latents: None,
            text_output: persona_diffusion::models::clip_text::Output::Last,
            tokens: applied.tokens.clone(),
        };
        // One report per denoising step of a batch: a tick per image in that batch.
        let bs = params.batch_size;
        let images = cx.sd.generate_with(&params, control, &mut |p| {
            cx.bar.inc(bs.min(run.len() - p.batch * bs) as u64);
        })?;
        for (k, img) in to_rgb8(&images)?.iter().enumerate() {
            let i = run[k];
            let text = serde_json::json!({"prompt": unit.template, "expanded": prompt, "seed": s.seed + i as u64, "steps": s.steps, "guidance": s.guidance});
            write_png(
                &dir.join(image_name(i)),
                img,
                &[("persona", text.to_string())],
            )?;
        }
    }
    Ok(())
}

/// `[0, 1, 2, 5, 6]` → `[[0, 1, 2], [5, 6]]`.
fn contiguous(v: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for &x in v {
        match out.last_mut() {
            Some(run) if *run.last().expect("non-empty") + 1 == x => run.push(x),
            _ => out.push(vec![x]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{contiguous, discard_stale, Unit};

    #[test]
    fn images_of_other_settings_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("0000.png"), b"x").unwrap();
        discard_stale(d, "a").unwrap();
        assert!(
            !d.join("0000.png").exists(),
            "images without a key are of unknown settings"
        );
        std::fs::write(d.join("0000.png"), b"x").unwrap();
        std::fs::write(d.join("prompt.txt"), b"p").unwrap();
        discard_stale(d, "a").unwrap();
        assert!(d.join("0000.png").exists(), "same key: kept (resume)");
        discard_stale(d, "b").unwrap();
        assert!(!d.join("0000.png").exists() && d.join("prompt.txt").exists());
        assert_eq!(std::fs::read_to_string(d.join("key.txt")).unwrap(), "b");
    }

    #[test]
    fn double_prompts_pair_each_identity_with_the_next() {
        let unit = |identity, template: &str| Unit {
            method: "ti".into(),
            identity,
            class: "double".into(),
            prompt_index: 0,
            template: template.into(),
            baseline: None,
        };
        assert_eq!(
            unit(2, "a {} person and a {1} person").identities(3),
            [2, 0]
        );
        assert_eq!(
            unit(0, "a {} person and a {1} person").identities(3),
            [0, 1]
        );
        assert_eq!(unit(1, "a {} person").identities(3), [1]);
        assert_eq!(unit(0, "a {} person and a {1} person").identities(1), [0]);
    }

    #[test]
    fn runs() {
        assert_eq!(
            contiguous(&[0, 1, 2, 5, 6, 9]),
            vec![vec![0, 1, 2], vec![5, 6], vec![9]]
        );
        assert!(contiguous(&[]).is_empty());
    }
}
