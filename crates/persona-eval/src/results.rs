//! What an evaluation produces: one record per image, summaries per prompt and per method (means with 95 %
//! bootstrap intervals, detection rate), and the files `results.json` / `results.csv`.
//!
//! Summaries are a pure function of the sorted records and the settings, so results merged from shards equal
//! those of a single run byte for byte.

use std::collections::BTreeMap;
use std::path::Path;

use persona_diffusion::pipeline::image::write_atomic;
use persona_diffusion::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::stats::{bootstrap, seed_for, Interval};

/// The scores of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub method: String,
    pub identity: String,
    /// The `{1}` identity of double prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<String>,
    /// The prompt set (the scatter plot's prompt class).
    pub class: String,
    pub prompt_index: usize,
    /// The template, placeholders kept.
    pub prompt: String,
    pub index: usize,
    /// `None` for images made elsewhere (`--images`).
    pub seed: Option<u64>,
    /// Relative to the output folder (`../` for images scored where they are), as the report links it.
    pub file: String,
    /// Faces detected.
    pub faces: usize,
    /// Identity similarity: the largest face vs the identity; for double prompts the mean of each identity's
    /// best-matching face. `None` without a face.
    pub id: Option<f64>,
    /// Double prompts: each identity's best match, `{}` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub id_each: Vec<f64>,
    /// CLIP cosine with the prompt (placeholders removed); `None` without a CLIP model.
    pub prompt_score: Option<f64>,
    /// Mean `1 − cos` of this image's face embedding to the other images of its (identity, prompt) that have
    /// a face (the spec's optional diversity); `None` without a face or without another face to compare.
    #[serde(default)]
    pub diversity: Option<f64>,
}

impl ImageRecord {
    fn group_key(&self) -> (String, String, String, usize) {
        (
            self.method.clone(),
            self.class.clone(),
            self.identity.clone(),
            self.prompt_index,
        )
    }
}

/// Scores over a set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub images: usize,
    /// Images with at least one face.
    pub detected: usize,
    pub detection_rate: f64,
    /// Mean over (identity, prompt) groups of the mean ID of images with a face.
    pub id: Option<Interval>,
    pub prompt_score: Option<Interval>,
    /// Mean pairwise face diversity within each (identity, prompt), averaged like ID.
    #[serde(default)]
    pub diversity: Option<Interval>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptSummary {
    pub method: String,
    pub class: String,
    pub prompt_index: usize,
    pub prompt: String,
    pub stats: Stats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    pub method: String,
    pub overall: Stats,
    /// Per prompt class (set).
    pub classes: BTreeMap<String, Stats>,
}

/// `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub settings: serde_json::Value,
    pub methods: Vec<MethodSummary>,
    pub prompts: Vec<PromptSummary>,
    pub images: Vec<ImageRecord>,
}

/// Summary of records that all belong to `key` (bootstrap seeded by it).
fn stats(records: &[&ImageRecord], key: &str, seed: u64) -> Stats {
    let mut groups: BTreeMap<_, Vec<&ImageRecord>> = BTreeMap::new();
    for r in records {
        groups.entry(r.group_key()).or_default().push(r);
    }
    let collect = |f: &dyn Fn(&ImageRecord) -> Option<f64>| -> Vec<Vec<f64>> {
        groups
            .values()
            .map(|g| g.iter().filter_map(|r| f(r)).collect())
            .collect()
    };
    let detected = records.iter().filter(|r| r.faces > 0).count();
    Stats {
        images: records.len(),
        detected,
        detection_rate: if records.is_empty() {
            0.0
        } else {
            detected as f64 / records.len() as f64
        },
        id: bootstrap(&collect(&|r| r.id), seed_for(&format!("id/{key}"), seed)),
        prompt_score: bootstrap(
            &collect(&|r| r.prompt_score),
            seed_for(&format!("prompt/{key}"), seed),
        ),
        diversity: bootstrap(
            &collect(&|r| r.diversity),
            seed_for(&format!("diversity/{key}"), seed),
        ),
    }
}

/// What training one identity cost, as its file records it (identities trained elsewhere may not say):
/// `compare` writes these to `training.json` and the report's training-cost table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingCost {
    pub method: String,
    pub identity: String,
    pub seconds: Option<f64>,
    pub steps: Option<u64>,
    pub peak_rss_gb: Option<f64>,
}

impl Results {
    /// Sorts the records and computes every summary (`seed` seeds the bootstrap).
    pub fn summarise(settings: serde_json::Value, mut images: Vec<ImageRecord>, seed: u64) -> Self {
        images.sort_by(|a, b| {
            a.group_key()
                .cmp(&b.group_key())
                .then(a.index.cmp(&b.index))
        });
        let mut by_method: BTreeMap<&str, Vec<&ImageRecord>> = BTreeMap::new();
        let mut by_prompt: BTreeMap<(&str, &str, usize), Vec<&ImageRecord>> = BTreeMap::new();
        for r in &images {
            by_method.entry(&r.method).or_default().push(r);
            by_prompt
                .entry((&r.method, &r.class, r.prompt_index))
                .or_default()
                .push(r);
        }
        let methods = by_method
            .iter()
            .map(|(m, recs)| {
                let mut classes: BTreeMap<&str, Vec<&ImageRecord>> = BTreeMap::new();
                for r in recs {
                    classes.entry(&r.class).or_default().push(r);
                }
                let classes = classes
                    .iter()
                    .map(|(c, v)| (c.to_string(), stats(v, &format!("{m}/{c}"), seed)))
                    .collect();
                MethodSummary {
                    method: m.to_string(),
                    overall: stats(recs, m, seed),
                    classes,
                }
            })
            .collect();
        let prompts = by_prompt
            .iter()
            .map(|((m, c, p), recs)| PromptSummary {
                method: m.to_string(),
                class: c.to_string(),
                prompt_index: *p,
                prompt: recs[0].prompt.clone(),
                stats: stats(recs, &format!("{m}/{c}/{p}"), seed),
            })
            .collect();
        Self {
            settings,
            methods,
            prompts,
            images,
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, e))
    }

    /// Writes `results.json` and `results.csv` into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Msg(e.to_string()))?;
        write_atomic(&dir.join("results.json"), json.as_bytes())?;
        write_atomic(&dir.join("results.csv"), self.csv().as_bytes())
    }

    /// One row per image.
    pub fn csv(&self) -> String {
        let mut out = String::from("method,identity,second,class,prompt_index,prompt,index,seed,file,faces,id,prompt_score,diversity\n");
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        for r in &self.images {
            let cells = [
                csv_cell(&r.method),
                csv_cell(&r.identity),
                csv_cell(r.second.as_deref().unwrap_or("")),
                csv_cell(&r.class),
                r.prompt_index.to_string(),
                csv_cell(&r.prompt),
                r.index.to_string(),
                r.seed.map(|s| s.to_string()).unwrap_or_default(),
                csv_cell(&r.file),
                r.faces.to_string(),
                opt(r.id),
                opt(r.prompt_score),
                opt(r.diversity),
            ];
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

/// RFC 4180 quoting where needed (prompts contain commas).
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(method: &str, identity: &str, p: usize, index: usize, id: Option<f64>) -> ImageRecord {
        ImageRecord {
            method: method.into(),
            identity: identity.into(),
            second: None,
            class: "single".into(),
            prompt_index: p,
            prompt: format!("a {{}} person, number {p}"),
            index,
            seed: Some(42 + index as u64),
            file: format!("{identity}/{p}/{index}.png"),
            faces: usize::from(id.is_some()),
            id,
            id_each: vec![],
            prompt_score: None,
            diversity: None,
        }
    }

    #[test]
    fn summaries_do_not_depend_on_record_order() {
        let recs = vec![
            rec("ti", "a", 0, 0, Some(0.5)),
            rec("ti", "a", 0, 1, None),
            rec("ti", "b", 1, 0, Some(0.1)),
        ];
        let one = Results::summarise(serde_json::json!({}), recs.clone(), 42);
        let rev = Results::summarise(serde_json::json!({}), recs.into_iter().rev().collect(), 42);
        assert_eq!(one, rev);
        let overall = &one.methods[0].overall;
        assert_eq!((overall.images, overall.detected), (3, 2));
        assert!((overall.id.unwrap().mean - 0.3).abs() < 1e-12);
        assert!(overall.prompt_score.is_none());
        assert!(one.csv().contains("\"a {} person, number 0\""));
    }
}
