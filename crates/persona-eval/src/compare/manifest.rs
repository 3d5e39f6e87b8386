//! The `persona compare` manifest (TOML): the base model, methods × identities × prompt sets, and the
//! sampling and training settings every method shares. Relative paths are relative to the manifest file.
//!
//! ```toml
//! model = "stabilityai/stable-diffusion-2-1-base"
//! prompt_sets = ["style", "single", "with_celeb", "double"]
//! clip = "models/clip-vit-base-patch32"      # optional
//! face_models = "models"                      # optional; also face_detector, face_recognizer
//! face_detector = "none"                      # optional: the whole image is the face (drawn faces, pets)
//! jpeg75 = false
//! [sampling]                                  # see Sampling
//! scheduler = "ddim"
//! steps = 50
//! guidance = 10
//! [train]                                     # unset: each method's default
//! batch_size = 8
//! [[methods]]
//! name = "cross-init"
//! [[methods]]
//! name = "idea-kv"
//! method = "idea"
//! kv_rank = 4                                 # any `persona train` method option (MethodOptions)
//! [[methods]]
//! name = "sefi"
//! attn_loss = 0.003
//! [[identities]]
//! name = "alice"
//! photos = "photos/alice"                     # training photos; also the references unless `references`
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Error, Result};
use persona_diffusion::device::{DeviceRequest, Precision};
use persona_identity::AdapterUse;
use persona_train::recipe::{MethodName, MethodOptions};
use serde::{Deserialize, Serialize};

use crate::protocol::Sampling;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: String,
    #[serde(default)]
    pub variant: Option<String>,
    /// Where the models run: `auto`, `cpu`, `cuda` or `cuda:N` (default auto; `persona compare --device` wins).
    #[serde(default)]
    pub device: Option<String>,
    /// The frozen models' precision: `f32`, `bf16` or `f16` (default: bf16 on a GPU, f32 on the CPU;
    /// `persona compare --dtype` wins).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Bundled set names or prompt files.
    pub prompt_sets: Vec<String>,
    #[serde(default)]
    pub clip: Option<PathBuf>,
    /// Face models folder (default: the usual places).
    #[serde(default)]
    pub face_models: Option<PathBuf>,
    /// Face detector file or folder (`persona train/eval --detector`); `"none"`: no detector, the whole image
    /// is the face (photos centre-cropped, detection rate 1 by construction).
    #[serde(default)]
    pub face_detector: Option<PathBuf>,
    /// Face recogniser `.onnx` (`--recognizer`), for ID-EA's face embedding and the ID score.
    #[serde(default)]
    pub face_recognizer: Option<PathBuf>,
    #[serde(default)]
    pub jpeg75: bool,
    /// Also every prompt with its placeholders replaced by this phrase (`"a person"`): the model without any
    /// identity, reported as method `baseline`.
    #[serde(default)]
    pub baseline: Option<String>,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub train: TrainSettings,
    pub methods: Vec<MethodEntry>,
    pub identities: Vec<IdentityEntry>,
    /// The manifest as written (paths not yet resolved): what results and resume keys record, so shards on
    /// machines with the checkout at different places still agree.
    #[serde(skip)]
    pub as_written: serde_json::Value,
}

/// Training settings shared by every method; unset values take each method's own default (the same as
/// `persona train`'s), and a method entry may override steps and learning rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub lr: Option<f64>,
    pub num_tokens: Option<usize>,
    pub resolution: u32,
    pub seed: u64,
    pub save_every: usize,
    /// Epoch repeats of the photos (diffusers' `--repeats`).
    pub repeats: usize,
    /// Centre-crop the photos instead of cropping around the detected face.
    pub no_face_crop: bool,
    /// What each caption template's `{}` becomes (`persona train --subject`; default: each method's own).
    pub subject: Option<String>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: None,
            batch_size: 8,
            lr: None,
            num_tokens: None,
            resolution: 512,
            seed: 0,
            save_every: 50,
            repeats: 100,
            no_face_crop: false,
            subject: None,
        }
    }
}

/// One method of the comparison. Besides the keys below it takes every option of `persona train`'s methods
/// under its [`MethodOptions`] name (`reg_weight`, `attn_loss`, `class_word`, `stages`, `kv_rank`, …).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodEntry {
    /// The label in the report; also the training method unless `method` is given (`ti`, `cross-init`,
    /// `sefi`, `idea`).
    pub name: String,
    pub method: Option<String>,
    pub lr: Option<f64>,
    pub steps: Option<usize>,
    /// Identity files trained elsewhere, by identity name: used instead of training.
    pub files: BTreeMap<String, PathBuf>,
    /// ID-EA identities at generation: `apply` their adapters (default) or `train-only` (tokens alone, as the
    /// released code's inference; `persona generate --adapter train-only`).
    pub adapter: AdapterChoice,
    /// Evaluate the identities an earlier entry trained instead of training (e.g. the same ID-EA identities with
    /// `adapter = "train-only"`).
    pub identities_of: Option<String>,
    #[serde(flatten)]
    pub options: MethodOptions,
}

/// Whether generation applies ID-EA adapters (`adapter` of a method entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterChoice {
    #[default]
    Apply,
    TrainOnly,
}

impl AdapterChoice {
    pub fn use_(self) -> AdapterUse {
        match self {
            Self::Apply => AdapterUse::Apply,
            Self::TrainOnly => AdapterUse::TrainOnly,
        }
    }
}

/// The keys of a method entry that are not method options.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryHead {
    name: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    lr: Option<f64>,
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    files: BTreeMap<String, PathBuf>,
    #[serde(default)]
    adapter: AdapterChoice,
    #[serde(default)]
    identities_of: Option<String>,
}

/// Split by hand: serde cannot combine `flatten` with `deny_unknown_fields`, and a misspelt option must be an
/// error, not silently the default.
impl<'de> Deserialize<'de> for MethodEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let all = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let head_keys = [
            "name",
            "method",
            "lr",
            "steps",
            "files",
            "adapter",
            "identities_of",
        ];
        let (head, rest): (serde_json::Map<_, _>, serde_json::Map<_, _>) = all
            .into_iter()
            .partition(|(k, _)| head_keys.contains(&k.as_str()));
        let h =
            EntryHead::deserialize(serde_json::Value::Object(head)).map_err(D::Error::custom)?;
        let options = MethodOptions::deserialize(serde_json::Value::Object(rest))
            .map_err(|e| D::Error::custom(format!("method {}: {e}", h.name)))?;
        Ok(Self {
            name: h.name,
            method: h.method,
            lr: h.lr,
            steps: h.steps,
            files: h.files,
            adapter: h.adapter,
            identities_of: h.identities_of,
            options,
        })
    }
}

impl MethodEntry {
    pub fn training_method(&self) -> &str {
        self.method.as_deref().unwrap_or(&self.name)
    }

    /// The method to train; an error when some identity has no file and the name is not a method.
    pub fn method_name(&self) -> Result<MethodName> {
        self.training_method().parse().with_context(|| format!("method {}: set `method` to one of ti, cross-init, sefi, idea, or give every identity's file under `files`", self.name))
    }

    /// Optimizer steps: the entry's, the shared setting's, or the method's default.
    pub fn steps(&self, t: &TrainSettings) -> usize {
        let default = self
            .method_name()
            .map(MethodName::default_steps)
            .unwrap_or(0);
        self.steps.or(t.steps).unwrap_or(default)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityEntry {
    /// A word: the token is `<name>`.
    pub name: String,
    pub photos: PathBuf,
    /// Reference photos for the ID score (default: `photos`).
    #[serde(default)]
    pub references: Option<PathBuf>,
}

impl IdentityEntry {
    pub fn token(&self) -> String {
        format!("<{}>", self.name)
    }

    pub fn references(&self) -> &Path {
        self.references.as_deref().unwrap_or(&self.photos)
    }
}

/// A TOML error on one line ("line 2, column 16: invalid type …"): the parser's own message draws the line with
/// a caret under it, over several lines.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

impl Manifest {
    /// Reads and checks a manifest, making its relative paths absolute against its folder.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut m: Manifest = toml::from_str(&text).map_err(|e| {
            Error::file(
                path,
                format!("not a valid manifest: {}", toml_error(&text, &e)),
            )
        })?;
        m.as_written = serde_json::to_value(&m)?;
        let base = path.parent().unwrap_or(Path::new("."));
        m.resolve(base);
        m.check().with_context(|| format!("{}", path.display()))?;
        Ok(m)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if !Path::new(&self.model).is_absolute() && base.join(&self.model).is_dir() {
            self.model = base.join(&self.model).to_string_lossy().into_owned();
        }
        for s in &mut self.prompt_sets {
            if base.join(&*s).is_file() {
                *s = base.join(&*s).to_string_lossy().into_owned();
            }
        }
        self.clip
            .iter_mut()
            .chain(self.face_models.iter_mut())
            .chain(self.face_recognizer.iter_mut())
            .chain(
                self.face_detector
                    .iter_mut()
                    .filter(|d| d.as_os_str() != persona_faces::NO_DETECTOR),
            )
            .for_each(fix);
        for i in &mut self.identities {
            fix(&mut i.photos);
            i.references.iter_mut().for_each(fix);
        }
        for m in &mut self.methods {
            m.files.values_mut().for_each(fix);
            m.options.names.iter_mut().for_each(fix);
        }
    }

    /// The manifest's `device` and `dtype`, parsed.
    pub fn placement(&self) -> Result<(Option<DeviceRequest>, Option<Precision>)> {
        let device = self
            .device
            .as_deref()
            .map(str::parse::<DeviceRequest>)
            .transpose()
            .map_err(|e| Error::Msg(format!("device: {e}")))?;
        let dtype = self
            .dtype
            .as_deref()
            .map(str::parse::<Precision>)
            .transpose()
            .map_err(|e| Error::Msg(format!("dtype: {e}")))?;
        Ok((device, dtype))
    }

    fn check(&self) -> Result<()> {
        self.placement()?;
        if self.methods.is_empty() || self.identities.is_empty() || self.prompt_sets.is_empty() {
            bail!("needs at least one method, one identity and one prompt set");
        }
        let unique = |v: Vec<&str>, what: &str| -> Result<()> {
            let mut s = v.clone();
            s.sort();
            s.dedup();
            if s.len() != v.len() {
                bail!("{what} names must be unique");
            }
            Ok(())
        };
        unique(
            self.methods.iter().map(|m| m.name.as_str()).collect(),
            "method",
        )?;
        unique(
            self.identities.iter().map(|i| i.name.as_str()).collect(),
            "identity",
        )?;
        // A learning rate no run can use (TOML can spell nan and inf) is refused before anything trains.
        let lrs = std::iter::once(("train.lr".to_string(), self.train.lr)).chain(
            self.methods
                .iter()
                .map(|m| (format!("method {}: lr", m.name), m.lr)),
        );
        for (what, lr) in lrs {
            if lr.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                bail!(
                    "{what} must be a finite number > 0, got {}",
                    lr.unwrap_or_default()
                );
            }
        }
        for (k, m) in self.methods.iter().enumerate() {
            if let Some(other) = &m.identities_of {
                if !self.methods[..k].iter().any(|e| &e.name == other) {
                    bail!(
                        "method {}: identities_of = {other:?} must name an entry listed before it",
                        m.name
                    );
                }
            }
            if self
                .identities
                .iter()
                .any(|i| !m.files.contains_key(&i.name))
            {
                m.method_name()?;
            }
        }
        for i in &self.identities {
            if i.name.is_empty()
                || !i
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!(
                    "identity name {:?}: use letters, digits, - and _ only",
                    i.name
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `face_detector = "none"` stays the keyword; face model paths resolve against the manifest.
    #[test]
    fn face_detector_none_is_not_a_path() {
        let text = |det: &str| {
            format!(
                "model = \"m\"\nprompt_sets = [\"single\"]\nface_detector = \"{det}\"\n\
                 face_recognizer = \"models/world.onnx\"\nmethods = []\nidentities = []\n"
            )
        };
        let base = Path::new("/runs/cmp");
        let mut m: Manifest = toml::from_str(&text("none")).unwrap();
        m.resolve(base);
        assert_eq!(m.face_detector, Some(PathBuf::from("none")));
        assert_eq!(m.face_recognizer, Some(base.join("models/world.onnx")));
        let mut m: Manifest = toml::from_str(&text("models/det_10g.onnx")).unwrap();
        m.resolve(base);
        assert_eq!(m.face_detector, Some(base.join("models/det_10g.onnx")));
    }

    /// The world's manifest: a baseline phrase, a shared subject, and an ID-EA entry that reuses another's
    /// identities with its adapters off; `identities_of` must name an earlier entry.
    #[test]
    fn baseline_subject_adapter_and_identities_of() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../world/compare.toml");
        let m: Manifest = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        m.check().unwrap();
        assert_eq!(m.baseline.as_deref(), Some("a person"));
        assert_eq!(m.train.subject.as_deref(), Some("{tokens}"));
        let off = m
            .methods
            .iter()
            .find(|e| e.name == "idea-train-only")
            .unwrap();
        assert_eq!(off.adapter, AdapterChoice::TrainOnly);
        assert_eq!(off.identities_of.as_deref(), Some("idea"));
        let mut bad = m.clone();
        bad.methods.swap(2, 3);
        let err = bad.check().unwrap_err().to_string();
        assert!(err.contains("must name an entry listed before it"), "{err}");
        let text = "model = \"m\"\nprompt_sets = [1]\n";
        let e = toml::from_str::<Manifest>(text).unwrap_err();
        let line = toml_error(text, &e);
        assert!(
            line.starts_with("line 2, column 16: invalid type") && !line.contains('\n'),
            "{line}"
        );
        for lr in [f64::NAN, f64::INFINITY, 0.0, -1e-3] {
            let mut bad = m.clone();
            bad.methods[1].lr = Some(lr);
            let err = bad.check().unwrap_err().to_string();
            assert!(
                err.contains("method cross-init: lr must be a finite number > 0"),
                "{err}"
            );
            let mut bad = m.clone();
            bad.train.lr = Some(lr);
            assert!(bad.check().unwrap_err().to_string().contains("train.lr"));
        }
    }
}
