//! The `persona compare` manifest (TOML): the base model, methods × identities × prompt sets, and the
//! sampling and training settings every method shares. Relative paths are relative to the manifest file.
//!
//! ```toml
//! model = "stabilityai/stable-diffusion-2-1-base"
//! prompt_sets = ["style", "single", "with_celeb", "double"]
//! clip = "models/clip-vit-base-patch32"      # optional
//! jpeg75 = false
//! [sampling]                                  # see Sampling
//! scheduler = "ddim"
//! steps = 50
//! guidance = 10
//! [train]
//! steps = 320
//! [[methods]]
//! name = "ti"
//! [[methods]]
//! name = "cross-init"
//! [[identities]]
//! name = "alice"
//! photos = "photos/alice"                     # training photos; also the references unless `references`
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::protocol::Sampling;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: String,
    #[serde(default)]
    pub variant: Option<String>,
    /// Bundled set names or prompt files.
    pub prompt_sets: Vec<String>,
    #[serde(default)]
    pub clip: Option<PathBuf>,
    /// Face models folder (default: the usual places).
    #[serde(default)]
    pub face_models: Option<PathBuf>,
    #[serde(default)]
    pub jpeg75: bool,
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

/// Training settings shared by every method (a method may override the learning rate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub num_tokens: usize,
    pub resolution: u32,
    pub seed: u64,
    pub save_every: usize,
    /// Centre-crop the photos instead of cropping around the detected face.
    pub no_face_crop: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self { steps: 320, batch_size: 8, lr: 0.005, num_tokens: 2, resolution: 512, seed: 0, save_every: 50, no_face_crop: false }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodEntry {
    /// The label in the report; also the training method unless `method` is given (`ti`, `cross-init`).
    pub name: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub lr: Option<f64>,
    /// Cross Init regulariser weight.
    #[serde(default = "default_reg")]
    pub reg_weight: f64,
    #[serde(default)]
    pub init_words: Option<String>,
    /// Identity files trained elsewhere, by identity name: used instead of training.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, PathBuf>,
}

fn default_reg() -> f64 {
    1e-5
}

impl MethodEntry {
    pub fn training_method(&self) -> &str {
        self.method.as_deref().unwrap_or(&self.name)
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

impl Manifest {
    /// Reads and checks a manifest, making its relative paths absolute against its folder.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut m: Manifest = toml::from_str(&text).with_context(|| format!("{}: not a valid manifest", path.display()))?;
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
        self.clip.iter_mut().chain(self.face_models.iter_mut()).for_each(fix);
        for i in &mut self.identities {
            fix(&mut i.photos);
            i.references.iter_mut().for_each(fix);
        }
        for m in &mut self.methods {
            m.files.values_mut().for_each(fix);
        }
    }

    fn check(&self) -> Result<()> {
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
        unique(self.methods.iter().map(|m| m.name.as_str()).collect(), "method")?;
        unique(self.identities.iter().map(|i| i.name.as_str()).collect(), "identity")?;
        for i in &self.identities {
            if i.name.is_empty() || !i.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                bail!("identity name {:?}: use letters, digits, - and _ only", i.name);
            }
        }
        Ok(())
    }
}
