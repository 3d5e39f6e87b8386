//! `persona eval`: generate the protocol's images for identities and score them, or score images made
//! elsewhere (`--images`), then write `results.json`, `results.csv` and `report.html`.

use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Error, Result};
use candle_core::{DType, Device};
use indicatif::ProgressBar;
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_faces::ModelSearch;
use persona_identity::Identity;
use persona_train::data::list_images;

use crate::prompts::{clip_text, PromptSet};
use crate::protocol::{run_unit, Sampling, Unit, UnitContext};
use crate::results::{ImageRecord, Results};
use crate::score::Scorer;

/// Everything `persona eval` was asked.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub model: Option<String>,
    pub variant: Option<String>,
    pub identities: Vec<PathBuf>,
    /// Use identities trained on another base model of the same width.
    pub force: bool,
    pub prompts: Option<PromptSet>,
    pub sampling: Sampling,
    /// One folder per identity in order, or one folder with a sub-folder per identity name.
    pub references: Vec<PathBuf>,
    /// Score these images instead of generating.
    pub images: Option<PathBuf>,
    pub clip: Option<PathBuf>,
    pub faces: ModelSearch,
    pub jpeg: bool,
    pub out: PathBuf,
    /// Also generate every prompt with its placeholders replaced by this phrase (`"a person"`): the same prompts
    /// without the identity, reported as method `baseline`.
    pub baseline: Option<String>,
}

/// Where the generating models run and in which dtype (the face models and the CLIP scorer stay on the CPU).
#[derive(Clone, Debug)]
pub struct ModelPlacement {
    pub device: Device,
    pub dtype: DType,
}

impl Default for ModelPlacement {
    /// The CPU in f32.
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// Runs the evaluation on the CPU in f32 and writes its files into `cfg.out`.
pub fn run(cfg: &EvalConfig, bar: &ProgressBar) -> Result<Results> {
    run_on(cfg, &ModelPlacement::default(), bar)
}

/// [`run`] with the generating models on `place`.
pub fn run_on(cfg: &EvalConfig, place: &ModelPlacement, bar: &ProgressBar) -> Result<Results> {
    in_output_folder(&cfg.out, || {
        let scorer = Scorer::load(&cfg.faces, cfg.clip.as_deref(), cfg.jpeg)?;
        let results = match &cfg.images {
            Some(dir) => score_folder(cfg, dir, &scorer, bar)?,
            None => generate_and_score(cfg, place, &scorer, bar)?,
        };
        results.write(&cfg.out)?;
        crate::report::write(&results, &[], &cfg.out)?;
        Ok(results)
    })
}

/// Runs `work` with `dir` created; when `work` fails and `dir` is still the empty folder made here, it is
/// removed again, so that a refused command leaves no empty output folder (finished units stay for a rerun).
pub(crate) fn in_output_folder<T>(dir: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    let result = work();
    if result.is_err() && created {
        // Fails, leaving everything, when the folder holds anything.
        let _ = std::fs::remove_dir(dir);
    }
    result
}

/// The settings recorded in `results.json` and shown in the report.
pub fn settings(
    model: Option<&str>,
    sampling: Option<&Sampling>,
    scorer: &Scorer,
    jpeg: bool,
) -> serde_json::Value {
    serde_json::json!({
        "model": model, "sampling": sampling, "recognizer": scorer.recognizer,
        "clip": scorer.clip_name.clone().unwrap_or_else(|| "missing".into()), "jpeg75": jpeg,
        "bootstrap": crate::stats::REPLICATES,
    })
}

fn generate_and_score(
    cfg: &EvalConfig,
    place: &ModelPlacement,
    scorer: &Scorer,
    bar: &ProgressBar,
) -> Result<Results> {
    let Some(model) = &cfg.model else {
        bail!("--model is needed to generate (or pass --images to score existing images)")
    };
    let Some(set) = &cfg.prompts else {
        bail!("--prompts is needed to generate")
    };
    if cfg.identities.is_empty() {
        bail!("at least one --identity is needed to generate");
    }
    let sd = StableDiffusion::load(
        model,
        &LoadOptions {
            variant: cfg.variant.clone(),
            device: place.device.clone(),
            dtype: place.dtype,
        },
    )?;
    let identities = persona_identity::load(&sd, &cfg.identities, cfg.force)?;
    let names: Vec<String> = identities.iter().map(|i| i.token.clone()).collect();
    let references = reference_embeddings(scorer, &cfg.references, &names)?;
    let method = method_label(&identities);
    let runs = std::iter::once((method.clone(), None)).chain(
        cfg.baseline
            .iter()
            .map(|b| (crate::protocol::BASELINE.to_string(), Some(b.clone()))),
    );
    let units: Vec<Unit> = runs
        .flat_map(|(method, baseline)| {
            (0..names.len()).flat_map(move |identity| {
                let (method, baseline) = (method.clone(), baseline.clone());
                set.prompts
                    .iter()
                    .enumerate()
                    .map(move |(prompt_index, t)| Unit {
                        method: method.clone(),
                        identity,
                        class: set.name.clone(),
                        prompt_index,
                        template: t.clone(),
                        baseline: baseline.clone(),
                    })
            })
        })
        .collect();
    bar.set_length(units.len() as u64 * cfg.sampling.unit_ticks());
    bar.set_message("generating and scoring");
    let mut settings = settings(Some(model), Some(&cfg.sampling), scorer, cfg.jpeg);
    if let Some(b) = &cfg.baseline {
        settings["baseline"] = b.as_str().into();
    }
    let key = settings.to_string();
    let loaded: Vec<Option<Identity>> = identities.into_iter().map(Some).collect();
    let cx = UnitContext {
        sd: &sd,
        sampling: &cfg.sampling,
        scorer,
        names: &names,
        identities: &loaded,
        references: &references,
        out: &cfg.out,
        key: &key,
        bar,
        adapter: persona_identity::AdapterUse::Apply,
    };
    let mut records = Vec::new();
    for u in &units {
        records.extend(run_unit(&cx, u)?);
    }
    Ok(Results::summarise(settings, records, cfg.sampling.seed))
}

/// The identities' method when they share one (`ti`, `cross-init`, …), else `mixed`.
fn method_label(identities: &[Identity]) -> String {
    let first = identities[0].meta.method.clone();
    if identities.iter().all(|i| i.meta.method == first) {
        first
    } else {
        "mixed".into()
    }
}

/// A folder name without the `<>` of a token.
pub fn bare(name: &str) -> String {
    name.trim_matches(['<', '>']).to_string()
}

/// One reference embedding per identity: `refs` in order, or sub-folders of one folder named after the
/// identities (with or without `<>`).
pub fn reference_embeddings(
    scorer: &Scorer,
    refs: &[PathBuf],
    names: &[String],
) -> Result<Vec<Vec<f32>>> {
    let dirs: Vec<PathBuf> = match refs {
        [] => bail!("--references is needed: photos of each identity to compare faces with"),
        _ if refs.len() == names.len() => refs.to_vec(),
        [one] => names
            .iter()
            .map(|n| [n.clone(), bare(n)].into_iter().map(|s| one.join(s)).find(|d| d.is_dir()).with_context(|| {
                format!("{}: no sub-folder {} for identity {n} (give one --references per identity, or one folder with a sub-folder each)", one.display(), bare(n))
            }))
            .collect::<Result<_>>()?,
        _ => bail!("{} --references for {} identities: give one per identity, or one folder with a sub-folder each", refs.len(), names.len()),
    };
    dirs.iter().map(|d| scorer.reference(d)).collect()
}

fn has_images(dir: &Path) -> bool {
    list_images(dir).is_ok()
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// The `--images` layout with several identities, for messages about a folder that does not follow it.
const LAYOUT_MANY: &str = "DIR/<identity>/<prompt>/<images> (<identity> without its <>)";
/// Both `--images` layouts and where the prompt comes from.
const LAYOUT: &str =
    "DIR/<prompt>/<images> (one identity) or DIR/<identity>/<prompt>/<images> (<identity> \
without its <>), each prompt from prompt.txt in its folder, else the folder's name";

/// `--images DIR`: `DIR/<prompt>/…` for one identity, or `DIR/<identity>/<prompt>/…`; the prompt is
/// `prompt.txt` in the folder, else the folder name. A folder that follows neither is refused, naming it and
/// the layouts.
fn score_folder(
    cfg: &EvalConfig,
    dir: &Path,
    scorer: &Scorer,
    bar: &ProgressBar,
) -> Result<Results> {
    let names = external_identities(cfg)?;
    let references = reference_embeddings(scorer, &cfg.references, &names)?;
    let top = subdirs(dir)?;
    let per_identity: Vec<(usize, Vec<PathBuf>)> = if top.iter().any(|d| has_images(d)) {
        if names.len() != 1 {
            bail!(
                "{}: one folder per prompt is for one identity; with {} identities use {LAYOUT_MANY}",
                dir.display(),
                names.len()
            );
        }
        vec![(0, top)]
    } else if has_images(dir) {
        bail!(
            "{}: the images lie directly in the folder; --images expects {LAYOUT}",
            dir.display()
        );
    } else {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sub = dir.join(bare(n));
                if !sub.is_dir() {
                    bail!(
                        "{}: no prompt folder with images, and no folder {} for identity {n}; --images expects {LAYOUT}",
                        dir.display(),
                        sub.display()
                    );
                }
                Ok((i, subdirs(&sub)?))
            })
            .collect::<Result<_>>()?
    };
    let total: usize = per_identity
        .iter()
        .flat_map(|(_, p)| p)
        .filter_map(|p| list_images(p).ok())
        .map(|v| v.len())
        .sum();
    if total == 0 {
        bail!(
            "{}: no images in its prompt folders; --images expects {LAYOUT}",
            dir.display()
        );
    }
    bar.set_length(total as u64);
    bar.set_message("scoring");
    let mut records = Vec::new();
    for (identity, prompts) in &per_identity {
        for (prompt_index, p) in prompts.iter().enumerate() {
            let folder = PromptFolder {
                dir: p,
                identity: *identity,
                prompt_index,
                out: &cfg.out,
            };
            records.extend(score_prompt_folder(
                scorer,
                &folder,
                &names,
                &references,
                bar,
            )?);
        }
    }
    let settings = settings(None, None, scorer, cfg.jpeg);
    Ok(Results::summarise(settings, records, cfg.sampling.seed))
}

/// Identity names for `--images`: the identity files' tokens, else the reference folder names.
fn external_identities(cfg: &EvalConfig) -> Result<Vec<String>> {
    if !cfg.identities.is_empty() {
        return cfg
            .identities
            .iter()
            .map(|p| Identity::load(p).map(|i| i.token).map_err(Error::from))
            .collect();
    }
    match cfg.references.as_slice() {
        [one] if !has_images(one) => Ok(subdirs(one)?
            .iter()
            .map(|d| {
                d.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()),
        refs => Ok(refs
            .iter()
            .map(|d| {
                d.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()),
    }
}

/// One prompt's folder of images made elsewhere.
struct PromptFolder<'a> {
    dir: &'a Path,
    identity: usize,
    prompt_index: usize,
    /// The output folder: image paths are recorded relative to it, so the report's links survive moving both.
    out: &'a Path,
}

fn score_prompt_folder(
    scorer: &Scorer,
    f: &PromptFolder,
    names: &[String],
    references: &[Vec<f32>],
    bar: &ProgressBar,
) -> Result<Vec<ImageRecord>> {
    let (dir, identity, prompt_index) = (f.dir, f.identity, f.prompt_index);
    let template = match std::fs::read_to_string(dir.join("prompt.txt")) {
        Ok(t) => t.trim().to_string(),
        Err(_) => dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    };
    let files = list_images(dir).map_err(Error::from)?;
    let images = files
        .iter()
        .map(|f| persona_faces::load_rgb(f).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    let unit = Unit {
        method: "images".into(),
        identity,
        class: "images".into(),
        prompt_index,
        template: template.clone(),
        baseline: None,
    };
    let order = unit.identities(names.len());
    let refs: Vec<&[f32]> = order.iter().map(|&i| references[i].as_slice()).collect();
    let scores = scorer.score(&images, &refs, &clip_text(&template, names))?;
    bar.inc(files.len() as u64);
    files
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(index, (file, s))| -> Result<ImageRecord> {
            Ok(ImageRecord {
                method: unit.method.clone(),
                identity: names[identity].clone(),
                second: order.get(1).map(|&j| names[j].clone()),
                class: unit.class.clone(),
                prompt_index,
                prompt: template.clone(),
                index,
                seed: None,
                file: relative_to(file, f.out)?
                    .to_string_lossy()
                    .replace('\\', "/"),
                faces: s.faces,
                id: s.id,
                id_each: s.id_each,
                prompt_score: s.prompt_score,
                diversity: s.diversity,
            })
        })
        .collect()
}

/// `path` relative to `base` (`../images/x.png`), both taken as absolute paths.
fn relative_to(path: &Path, base: &Path) -> Result<PathBuf> {
    let (p, b) = (std::path::absolute(path)?, std::path::absolute(base)?);
    let common = p
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .count();
    let mut rel: PathBuf = b.components().skip(common).map(|_| "..").collect();
    rel.extend(p.components().skip(common));
    Ok(rel)
}
