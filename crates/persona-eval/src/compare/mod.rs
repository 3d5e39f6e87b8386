//! `persona compare`: methods × identities × prompt sets from a manifest → train what is missing, generate,
//! score, one report.
//!
//! The work is a sorted list of units (method, identity, prompt set, prompt). `--shard k/n` takes the k-th of
//! n contiguous blocks of it (contiguous, so a shard needs few identities trained); every unit writes into its
//! own folder of the shared output layout, so shards never collide and their outputs can simply be copied
//! together. `--merge` reads every unit's records and writes `results.json`, `results.csv` and `report.html`;
//! an unsharded run merges at the end. Finished units and identities are skipped on a re-run.

pub mod manifest;
pub mod train;

use std::path::Path;

use crate::error::{bail, Result};
use indicatif::ProgressBar;
use persona_diffusion::device::{DeviceRequest, Precision};
use persona_diffusion::pipeline::image::write_atomic;
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_faces::ModelSearch;
use persona_identity::Identity;

use crate::eval::settings;
use crate::prompts::PromptSet;
use crate::protocol::{run_unit, stored_records, Unit, UnitContext, BASELINE};
use crate::results::Results;
use crate::score::Scorer;
pub use manifest::Manifest;

/// `k/n`: the k-th (1-based) of n shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("--shard {s}: expected k/n with 1 ≤ k ≤ n (e.g. 2/8)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }
}

impl Shard {
    /// The block of `len` items this shard owns.
    pub fn range(self, len: usize) -> std::ops::Range<usize> {
        (self.k - 1) * len / self.n..self.k * len / self.n
    }

    fn tag(self) -> String {
        format!("shard-{}-of-{}", self.k, self.n)
    }
}

/// Every unit of the manifest, in the canonical order.
pub fn plan(m: &Manifest) -> Result<Vec<Unit>> {
    let sets = m
        .prompt_sets
        .iter()
        .map(|s| PromptSet::resolve(s))
        .collect::<persona_diffusion::Result<Vec<_>>>()?;
    let mut units = Vec::new();
    for method in &m.methods {
        for identity in 0..m.identities.len() {
            for set in &sets {
                for (prompt_index, template) in set.prompts.iter().enumerate() {
                    let class = set.name.clone();
                    units.push(Unit {
                        method: method.name.clone(),
                        identity,
                        class,
                        prompt_index,
                        template: template.clone(),
                        baseline: None,
                    });
                }
            }
        }
    }
    if let Some(phrase) = &m.baseline {
        for identity in 0..m.identities.len() {
            for set in &sets {
                for (prompt_index, template) in set.prompts.iter().enumerate() {
                    units.push(Unit {
                        method: BASELINE.into(),
                        identity,
                        class: set.name.clone(),
                        prompt_index,
                        template: template.clone(),
                        baseline: Some(phrase.clone()),
                    });
                }
            }
        }
    }
    Ok(units)
}

/// The face-model search of a manifest.
fn face_search(m: &Manifest) -> ModelSearch {
    ModelSearch {
        models_dir: m.face_models.clone(),
        detector: m.face_detector.clone(),
        recognizer: m.face_recognizer.clone(),
        ..Default::default()
    }
}

/// What results.json records, and (per method) the key a unit's stored records must carry to be reused.
fn settings_of(m: &Manifest, scorer: &Scorer) -> serde_json::Value {
    let mut s = settings(
        m.as_written["model"].as_str(),
        Some(&m.sampling),
        scorer,
        m.jpeg75,
    );
    s["train"] = serde_json::to_value(&m.train).expect("plain data");
    if let Some(b) = &m.baseline {
        s["baseline"] = b.as_str().into();
    }
    s["prompt_sets"] = serde_json::json!(m
        .prompt_sets
        .iter()
        .map(|p| PromptSet::resolve(p).map(|s| s.name))
        .collect::<persona_diffusion::Result<Vec<_>>>()
        .ok());
    s
}

fn unit_key(settings: &serde_json::Value, m: &Manifest, method: &str) -> String {
    let entry = m.as_written["methods"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == method));
    serde_json::json!({"settings": settings, "method": entry, "identities": m.as_written["identities"]}).to_string()
}

/// Runs this shard's units (all of them without a shard) and, unsharded, merges; on the manifest's device
/// and dtype.
pub fn run(
    manifest: &Path,
    out: &Path,
    shard: Option<Shard>,
    bar: &ProgressBar,
) -> Result<Option<Results>> {
    run_on(manifest, out, shard, (None, None), bar)
}

/// [`run`] with `--device` / `--dtype` (each `Some` wins over the manifest's `device` / `dtype`; both unset:
/// `auto`, which prints a note when it falls back to the CPU, and the device's default dtype).
pub fn run_on(
    manifest: &Path,
    out: &Path,
    shard: Option<Shard>,
    flags: (Option<DeviceRequest>, Option<Precision>),
    bar: &ProgressBar,
) -> Result<Option<Results>> {
    let m = Manifest::read(manifest)?;
    let (device, dtype) = m.placement()?;
    let (device, note) = persona_diffusion::device::select(flags.0.or(device).unwrap_or_default())?;
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    let dtype = persona_diffusion::device::model_dtype(flags.1.or(dtype), &device);
    let all = plan(&m)?;
    let mine = match shard {
        Some(s) => all[s.range(all.len())].to_vec(),
        None => all.clone(),
    };
    crate::eval::in_output_folder(out, || {
        run_units(&m, out, shard, (&mine, &all), (device, dtype), bar)
    })
}

/// This shard's units in `out` (made by [`run_on`]), then, unsharded, the merge.
fn run_units(
    m: &Manifest,
    out: &Path,
    shard: Option<Shard>,
    (mine, all): (&[Unit], &[Unit]),
    (device, dtype): (candle_core::Device, candle_core::DType),
    bar: &ProgressBar,
) -> Result<Option<Results>> {
    let scorer = Scorer::load(&face_search(m), m.clip.as_deref(), m.jpeg75)?;
    let sd = StableDiffusion::load(
        &m.model,
        &LoadOptions {
            variant: m.variant.clone(),
            device,
            dtype,
        },
    )?;
    let names: Vec<String> = m.identities.iter().map(|i| i.token()).collect();
    let references = m
        .identities
        .iter()
        .map(|i| scorer.reference(i.references()))
        .collect::<Result<Vec<_>>>()?;
    let settings = settings_of(m, &scorer);
    let needed = needed_identities(m, mine);
    let train_ticks: usize = m
        .methods
        .iter()
        .zip(&needed)
        .map(|(e, n)| n.iter().filter(|&&b| b).count() * e.steps(&m.train))
        .sum();
    bar.set_length(train_ticks as u64 + mine.len() as u64 * m.sampling.unit_ticks());
    let tag = shard.map_or("all".to_string(), Shard::tag);
    for (method, need) in m.methods.iter().zip(&needed) {
        let units: Vec<&Unit> = mine.iter().filter(|u| u.method == method.name).collect();
        if units.is_empty() {
            continue;
        }
        let identities = need
            .iter()
            .zip(&m.identities)
            .map(|(&n, e)| {
                n.then(|| train::ensure_identity(&sd, m, method, e, out, &tag, bar))
                    .transpose()
            })
            .collect::<Result<Vec<Option<Identity>>>>()?;
        bar.set_message(format!("generating and scoring {}", method.name));
        let key = unit_key(&settings, m, &method.name);
        let cx = UnitContext {
            sd: &sd,
            sampling: &m.sampling,
            scorer: &scorer,
            names: &names,
            identities: &identities,
            references: &references,
            out,
            key: &key,
            bar,
            adapter: method.adapter.use_(),
        };
        for u in units {
            run_unit(&cx, u)?;
        }
    }
    let baseline: Vec<&Unit> = mine.iter().filter(|u| u.baseline.is_some()).collect();
    if !baseline.is_empty() {
        bar.set_message("generating and scoring the baseline");
        let none = vec![None; names.len()];
        let key = unit_key(&settings, m, BASELINE);
        let cx = UnitContext {
            sd: &sd,
            sampling: &m.sampling,
            scorer: &scorer,
            names: &names,
            identities: &none,
            references: &references,
            out,
            key: &key,
            bar,
            adapter: persona_identity::AdapterUse::Apply,
        };
        for u in baseline {
            run_unit(&cx, u)?;
        }
    }
    match shard {
        None => merge_with(m, &scorer, out).map(Some),
        Some(s) => {
            tracing::info!("{}: {} of {} units done", s.tag(), mine.len(), all.len());
            Ok(None)
        }
    }
}

/// Per method, which identities this work needs (its units' and their `{1}` partners').
fn needed_identities(m: &Manifest, units: &[Unit]) -> Vec<Vec<bool>> {
    m.methods
        .iter()
        .map(|method| {
            let mut need = vec![false; m.identities.len()];
            for u in units.iter().filter(|u| u.method == method.name) {
                u.identities(need.len())
                    .into_iter()
                    .for_each(|i| need[i] = true);
            }
            need
        })
        .collect()
}

/// Joins the records of every unit (from all shards) into one results set and report.
pub fn merge(manifest: &Path, out: &Path) -> Result<Results> {
    let m = Manifest::read(manifest)?;
    let scorer = Scorer::load(&face_search(&m), m.clip.as_deref(), m.jpeg75)?;
    merge_with(&m, &scorer, out)
}

fn merge_with(m: &Manifest, scorer: &Scorer, out: &Path) -> Result<Results> {
    let all = plan(m)?;
    let names: Vec<String> = m.identities.iter().map(|i| i.token()).collect();
    let settings = settings_of(m, scorer);
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for u in &all {
        let path = out.join(u.rel_dir(&names)).join("records.json");
        match stored_records(&path, &unit_key(&settings, m, &u.method))? {
            Some(r) => records.extend(r),
            None => missing.push(path.display().to_string()),
        }
    }
    if !missing.is_empty() {
        bail!("{} of {} units are not finished (or were made with other settings), e.g. {}; run the shards that own them", missing.len(), all.len(), missing[0]);
    }
    let results = Results::summarise(settings, records, m.sampling.seed);
    results.write(out)?;
    let costs = train::costs(m, out);
    write_atomic(
        &out.join("training.json"),
        serde_json::to_string_pretty(&costs)?.as_bytes(),
    )?;
    crate::report::write(&results, &costs, out)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_cover_the_work_once() {
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!(s, Shard { k: 2, n: 3 });
        for n in 1..6 {
            let covered: Vec<usize> = (1..=n).flat_map(|k| Shard { k, n }.range(11)).collect();
            assert_eq!(covered, (0..11).collect::<Vec<_>>());
        }
        assert!(
            "0/2".parse::<Shard>().is_err()
                && "3/2".parse::<Shard>().is_err()
                && "x".parse::<Shard>().is_err()
        );
    }
}
