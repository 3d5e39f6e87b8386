//! Identity files and what generation applies from them. Training (`persona-train`) writes identities;
//! generation, evaluation and the format converters only read them, and need nothing else from training.
//!
//! - Files: one safetensors file per learned identity ([`Identity`]), and conversion to and from the embedding
//!   files other tools use (below).
//! - Applying them: [`load`] checks identity files against the loaded model; [`Applied`] turns them into the
//!   learned tokens, the prompt phrases and ID-EA's [`IdentityControl`] (its adapter and key/value deltas, built
//!   from the layers in [`layers`], [`adapter`] and [`kv`], which ID-EA's training uses too); [`stages`] reads
//!   SeFi-IDE's per-stage tokens.
//!
//! An identity file holds the pseudo-token embeddings (`embeddings`, `[n, d]` f32), any method modules under
//! a prefix (`enhancer.`, `adapter.`, `anchor.`, `kv.`, `stages.`, `sdxl.`), and in its header the metadata that
//! makes it self-describing: format version, method, base model, token names, hyper-parameters (see
//! [`IdentityMeta`] and `docs/identity.md`). Loading one onto another base model is refused by [`Identity::check_base`].
//!
//! [`export_diffusers`] / [`export_a1111`] write the files diffusers and AUTOMATIC1111 / ComfyUI load;
//! [`import`] reads those and the official `learned_embeds.bin` with a pickle reader that never executes
//! anything ([`Identity::from_imported`] turns the result into an identity).

pub mod adapter;
mod apply;
mod control;
mod error;
mod export;
mod import;
pub mod kv;
pub mod layers;
mod meta;
mod pickle;
pub mod stages;
mod torch_zip;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use persona_diffusion::safetensors_file;

pub use apply::{learned_tokens, load, Applied};
pub use control::{AdapterUse, IdentityControl};
pub use error::{IdentityError, Result};
pub use export::{diffusers_second_path, export_a1111, export_diffusers};
pub use import::{import, import_diffusers_pair, EmbeddingFormat, ImportedEmbedding};
pub use meta::{text_encoder_hash, BaseModel, IdentityMeta, FORMAT, FORMAT_VERSION};

/// The identity-file name of ID-EA's Enhancer output, which is all its adapter needs at inference.
pub const FUSED: &str = "fused";

/// Name of the pseudo-token embedding tensor in an identity file.
pub const EMBEDDINGS: &str = "embeddings";

/// SDXL identities: the rows of `text_encoder_2`'s token table (OpenCLIP bigG, `[n, 1280]`); `embeddings`
/// holds `text_encoder`'s (CLIP-L, `[n, 768]`).
pub const SDXL_CLIP_G: &str = "sdxl.clip_g";

/// Written by older imports next to `embeddings` (a copy of it); ignored when read.
pub const SDXL_CLIP_L: &str = "sdxl.clip_l";

/// A learned identity: pseudo-token embeddings, method modules and metadata.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The name the user gave (`<alice>`); prompts mention it and it expands to `tokens`.
    pub token: String,
    /// One pseudo-token per embedding row (`<alice>_v0`, `<alice>_v1`, …).
    pub tokens: Vec<String>,
    /// `[n, d]` f32, row i for `tokens[i]`; d is the text encoder's hidden size.
    pub embeddings: Tensor,
    /// Method modules by full tensor name (`adapter.gamma`, `sdxl.clip_g`…).
    pub modules: BTreeMap<String, Tensor>,
    pub meta: IdentityMeta,
}

impl Identity {
    /// An identity with the default pseudo-token names ([`Identity::pseudo_tokens`]) and no modules.
    pub fn new(token: impl Into<String>, embeddings: Tensor, meta: IdentityMeta) -> Result<Self> {
        let token = token.into();
        let n = embeddings.dims().first().copied().unwrap_or(0);
        let identity = Identity {
            tokens: Self::pseudo_tokens(&token, n),
            token,
            embeddings,
            modules: BTreeMap::new(),
            meta,
        };
        identity.validate()?;
        Ok(identity)
    }

    /// `<alice>` → `<alice>_v0 … <alice>_v{n-1}`: distinct strings the tokenizer can add as whole tokens.
    pub fn pseudo_tokens(token: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{token}_v{i}")).collect()
    }

    /// Number of pseudo-tokens (embedding rows).
    pub fn num_tokens(&self) -> usize {
        self.embeddings.dims().first().copied().unwrap_or(0)
    }

    /// Embedding width d.
    pub fn width(&self) -> usize {
        self.embeddings.dims().get(1).copied().unwrap_or(0)
    }

    /// An SDXL identity: one row per pseudo-token in each of SDXL's two token tables (`embeddings` for
    /// `text_encoder`, module `sdxl.clip_g` for `text_encoder_2`).
    pub fn is_sdxl(&self) -> bool {
        self.modules.contains_key(SDXL_CLIP_G)
    }

    /// The rows of SDXL's second token table `[n, d2]`, `None` for SD 1.x/2.x identities.
    pub fn rows_2(&self) -> Option<&Tensor> {
        self.modules.get(SDXL_CLIP_G)
    }

    /// Refuses an identity of one model family (SD 1.x/2.x or SDXL) on a model of the other, in one line.
    pub fn check_family(&self, model_is_sdxl: bool, width_2: Option<usize>) -> Result<()> {
        match (self.is_sdxl(), model_is_sdxl) {
            (true, false) => Err(IdentityError::Invalid(format!(
                "identity {} is an SDXL identity (rows for two text encoders); this model is not SDXL",
                self.token
            ))),
            (false, true) => Err(IdentityError::Invalid(format!(
                "identity {} is an SD 1.x/2.x identity (one text encoder); this model is SDXL, which needs rows \
                 for both of its text encoders",
                self.token
            ))),
            _ => match (self.rows_2().and_then(|r| r.dims().get(1).copied()), width_2) {
                (Some(have), Some(want)) if have != want => Err(IdentityError::Invalid(format!(
                    "identity {}'s {SDXL_CLIP_G} rows are {have} wide, this model's text_encoder_2 {want}",
                    self.token
                ))),
                _ => Ok(()),
            },
        }
    }

    /// The same identity with its tensors on `device` (files are read onto the CPU; a model may run on a GPU).
    pub fn to_device(self, device: &candle_core::Device) -> Result<Self> {
        let embeddings = self.embeddings.to_device(device)?;
        let modules = self
            .modules
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings,
            modules,
            ..self
        })
    }

    /// Writes the identity atomically (temporary file + rename) as safetensors with its metadata header.
    /// A tensor with NaN or infinite values is refused (nothing is written): such a file could never be loaded.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        if let Some(name) = self.non_finite()? {
            return Err(IdentityError::file(
                path.as_ref(),
                format!("tensor `{name}` holds NaN or infinite values; not written"),
            ));
        }
        let header = meta::to_header(&self.meta, &self.token, &self.tokens)?;
        let mut tensors = self.modules.clone();
        tensors.insert(EMBEDDINGS.into(), self.embeddings.to_dtype(DType::F32)?);
        Ok(safetensors_file::write(
            path.as_ref(),
            &tensors,
            Some(header),
        )?)
    }

    /// Reads an identity file; errors name the file and say what is wrong with it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = safetensors_file::read(path)?;
        let (meta, token, tokens) = meta::from_header(&file.metadata, path)?;
        let embeddings = file
            .tensors
            .remove(EMBEDDINGS)
            .ok_or_else(|| IdentityError::file(path, format!("missing tensor `{EMBEDDINGS}`")))?
            .to_dtype(DType::F32)?;
        let mut modules = file.tensors;
        modules.remove(SDXL_CLIP_L);
        let identity = Identity {
            token,
            tokens,
            embeddings,
            modules,
            meta,
        };
        identity
            .validate()
            .map_err(|e| IdentityError::file(path, e))?;
        if let Some(name) = identity.non_finite()? {
            return Err(IdentityError::file(
                path,
                format!("tensor `{name}` holds NaN or infinite values; the identity is damaged (retrain it, or --resume from its checkpoint)"),
            ));
        }
        Ok(identity)
    }

    /// The first tensor holding NaN or infinite values, if any.
    fn non_finite(&self) -> Result<Option<String>> {
        let tensors = std::iter::once((EMBEDDINGS, &self.embeddings))
            .chain(self.modules.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, t) in tensors {
            if !persona_diffusion::nn::all_finite(t)? {
                return Ok(Some(name.to_string()));
            }
        }
        Ok(None)
    }

    /// Refuses to use this identity with `loaded` when it was trained for another base model: a different
    /// embedding width can never work; a different text encoder of the same width (another hash) is refused
    /// unless `force`, since the vectors live in that encoder's input space. An identity of unknown base (an
    /// import without `--model`) is checked by width only.
    pub fn check_base(&self, loaded: &BaseModel, force: bool) -> Result<()> {
        let trained_for = &self.meta.base_model;
        let width_differs = self.width() != loaded.width();
        let hash_differs =
            !trained_for.is_unknown() && trained_for.text_encoder_hash != loaded.text_encoder_hash;
        if width_differs || (hash_differs && !force) {
            return Err(IdentityError::BaseMismatch {
                identity: self.token.clone(),
                trained_for: Box::new(trained_for.clone()),
                loaded: Box::new(loaded.clone()),
                width_differs,
            });
        }
        if hash_differs {
            tracing::warn!(
                "identity {} was trained for {}; using it with {} because force was given",
                self.token,
                trained_for.describe(),
                loaded.describe()
            );
        }
        Ok(())
    }

    /// An identity from an imported embedding, method `imported`. The token is `token`, else the one the file
    /// names; `base` (when known) is recorded and must have the vectors' width, otherwise the base is unknown.
    pub fn from_imported(
        imported: ImportedEmbedding,
        token: Option<&str>,
        base: Option<BaseModel>,
    ) -> Result<Self> {
        let token = token
            .map(str::to_owned)
            .or(imported.token.clone())
            .ok_or_else(|| {
                IdentityError::Invalid(format!(
                    "the {} file names no token; give one (--token)",
                    imported.format
                ))
            })?;
        let width = imported.vectors.dims().get(1).copied().unwrap_or(0);
        let base = match base {
            Some(base) if base.width() != width => {
                return Err(IdentityError::Invalid(format!(
                    "the imported vectors are {width} wide but base model {} has {}-wide token embeddings",
                    base.describe(),
                    base.width()
                )));
            }
            Some(base) => base,
            None => BaseModel::unknown(width),
        };
        let hyper = serde_json::json!({ "imported_from": imported.format.to_string(), "source_token": imported.token });
        let mut identity = Identity::new(
            token,
            imported.vectors.to_device(&Device::Cpu)?,
            IdentityMeta::new("imported", base, hyper),
        )?;
        identity.modules = imported.modules;
        identity.validate()?;
        Ok(identity)
    }

    /// The invariants every saved or loaded identity keeps.
    fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(IdentityError::Invalid(msg));
        if self.token.is_empty() || self.token.chars().any(char::is_whitespace) {
            return invalid(format!(
                "token {:?} must be non-empty and without spaces",
                self.token
            ));
        }
        let [n, d] = match self.embeddings.dims() {
            &[n, d] if n > 0 && d > 0 => [n, d],
            dims => {
                return invalid(format!(
                    "embeddings must be [n, d] with n, d > 0, got {dims:?}"
                ))
            }
        };
        if self.tokens.len() != n {
            return invalid(format!(
                "{} pseudo-token names for {n} embedding rows",
                self.tokens.len()
            ));
        }
        if self.modules.contains_key(EMBEDDINGS) {
            return invalid(format!("a module may not be named `{EMBEDDINGS}`"));
        }
        if let Some(g) = self.modules.get(SDXL_CLIP_G) {
            if g.rank() != 2 || g.dims()[0] != n {
                return invalid(format!(
                    "{SDXL_CLIP_G} must be [{n}, d2] (one row per pseudo-token), got {:?}",
                    g.dims()
                ));
            }
        }
        if self.meta.base_model.width() != d {
            return invalid(format!(
                "embeddings are {d} wide but the base model's are {}",
                self.meta.base_model.width()
            ));
        }
        Ok(())
    }
}
