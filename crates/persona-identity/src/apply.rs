//! From identity files to what generation applies: `persona generate`, `persona attention`, `persona eval` and
//! `persona compare` all go through [`load`] and [`Applied`], so every command draws an identity the same way.

use std::path::PathBuf;

use persona_diffusion::nn::AttentionControl;
use persona_diffusion::pipeline::{LearnedTokens, StableDiffusion};

use crate::control::{AdapterUse, IdentityControl};
use crate::{stages, BaseModel, Identity, IdentityError as Error, Result};

/// Loads identity files for generation, checking each against the loaded base model (family, width, text
/// encoder, stage tensors), onto its device. The same identity twice, or two with one name, is refused.
pub fn load(sd: &StableDiffusion, paths: &[PathBuf], force: bool) -> Result<Vec<Identity>> {
    let base = BaseModel::from_model_dir(&sd.dir)?;
    let width_2 = sd
        .sdxl
        .as_ref()
        .map(|x| x.text_encoder_2.model.config().hidden_size);
    let loaded: Vec<Identity> = paths
        .iter()
        .map(|p| {
            let id = Identity::load(p)?;
            id.check_family(sd.is_sdxl(), width_2)
                .map_err(|e| Error::file(p, e))?;
            id.check_base(&base, force)?;
            stages::staged_tokens(&id).map_err(|e| Error::file(p, e))?;
            id.to_device(&sd.device)
        })
        .collect::<Result<_>>()?;
    // Two identities with one name (the same file twice, or two people trained as `<alice>`) would claim the
    // same pseudo-tokens: refused, naming both files.
    for (j, b) in loaded.iter().enumerate() {
        if let Some(i) = loaded[..j].iter().position(|a| a.token == b.token) {
            let same = paths[i].canonicalize().ok() == paths[j].canonicalize().ok();
            return Err(Error::file(
                &paths[j],
                if same {
                    format!(
                        "the same identity ({}) is given twice with --identity; give it once",
                        b.token
                    )
                } else {
                    format!(
                        "identity {} has the same name as {} (--identity given twice for one name); retrain or import one under another --token",
                        b.token,
                        paths[i].display()
                    )
                },
            ));
        }
    }
    Ok(loaded)
}

/// Everything generation applies from a set of identities.
pub struct Applied {
    /// The learned rows for the tokenizer and text encoders (per-stage key/value rows for SeFi-IDE).
    pub tokens: Vec<LearnedTokens>,
    /// `(name, phrase)` for prompt expansion: `<alice>` → `<alice>_v0 <alice>_v1`.
    pub names: Vec<(String, String)>,
    /// ID-EA's adapters and key/value deltas, when any identity carries them and `adapter` applies them.
    pub control: Option<IdentityControl>,
}

impl Applied {
    /// `guided`: the UNet batch is `[negative; prompt]` (guidance scale > 1), so adapters adapt the prompt half.
    pub fn new(
        sd: &StableDiffusion,
        identities: &[Identity],
        adapter: AdapterUse,
        guided: bool,
    ) -> Result<Self> {
        let (tokens, names) = learned_tokens(identities);
        Ok(Applied {
            tokens,
            names,
            control: IdentityControl::new(sd, identities, adapter, guided)?,
        })
    }

    /// The control to pass to `generate_with` (or to wrap, as `persona attention` does).
    pub fn control(&self) -> Option<&dyn AttentionControl> {
        self.control.as_ref().map(|c| c as &dyn AttentionControl)
    }
}

/// The tokens and `(name, phrase)` pairs of `identities` (their stage tensors checked by [`load`]).
pub fn learned_tokens(identities: &[Identity]) -> (Vec<LearnedTokens>, Vec<(String, String)>) {
    let plain = |i: &Identity| LearnedTokens {
        names: i.tokens.clone(),
        rows: i.embeddings.clone(),
        rows_2: i.rows_2().cloned(),
    };
    let tokens: Vec<LearnedTokens> = identities
        .iter()
        .map(|i| {
            stages::staged_tokens(i)
                .ok()
                .flatten()
                .unwrap_or_else(|| plain(i))
        })
        .collect();
    let names = identities
        .iter()
        .zip(&tokens)
        .map(|(i, t)| (i.token.clone(), t.phrase()))
        .collect();
    (tokens, names)
}
