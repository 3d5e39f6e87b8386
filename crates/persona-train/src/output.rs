//! From a finished training run to an identity file, and from identity files back to what generation needs.

use persona_diffusion::pipeline::{LearnedTokens, StableDiffusion};

use crate::identity::{BaseModel, Identity, IdentityMeta};
use crate::methods::Method;
use crate::trainer::TrainConfig;
use crate::{Error, Result};

/// The identity a run produced: the learned rows, the Cross Init anchor as a module, and the settings.
pub fn to_identity(
    sd: &StableDiffusion,
    model: &str,
    method: &dyn Method,
    cfg: &TrainConfig,
    token: &str,
    hyper_extra: serde_json::Value,
) -> Result<Identity> {
    let mut base = BaseModel::from_model_dir(&sd.dir)?;
    base.name = model.to_string();
    let hyper = serde_json::json!({
        "steps": cfg.steps, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "lr": cfg.effective_lr(),
        "schedule": cfg.schedule, "warmup": cfg.warmup, "adam": cfg.adam, "seed": cfg.seed,
        "resolution": cfg.resolution, "method": hyper_extra,
    });
    let meta = IdentityMeta::new(method.name(), base, hyper);
    let (names, embeddings, modules) = method.identity_parts()?;
    let mut identity = Identity::new(token, embeddings, meta)?;
    identity.tokens = names;
    identity.modules = modules;
    Ok(identity)
}

/// Loads identity files for generation, checking each against the loaded base model, onto its device.
pub fn load_identities(
    sd: &StableDiffusion,
    paths: &[std::path::PathBuf],
    force: bool,
) -> Result<Vec<Identity>> {
    let base = BaseModel::from_model_dir(&sd.dir)?;
    let loaded: Vec<Identity> = paths
        .iter()
        .map(|p| {
            let id = Identity::load(p)?;
            let width_2 = sd
                .sdxl
                .as_ref()
                .map(|x| x.text_encoder_2.model.config().hidden_size);
            id.check_family(sd.is_sdxl(), width_2)
                .map_err(|e| Error::file(p, e))?;
            id.check_base(&base, force)?;
            crate::methods::sefi::staged_tokens(&id).map_err(|e| Error::file(p, e))?;
            id.to_device(&sd.device).map_err(Error::from)
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

/// What the pipeline needs from identities: their tokens and rows (per-stage key/value rows for SeFi-IDE
/// identities, checked by [`load_identities`]), and `(name, phrase)` for prompt expansion.
pub fn learned_tokens(identities: &[Identity]) -> (Vec<LearnedTokens>, Vec<(String, String)>) {
    let plain = |i: &Identity| LearnedTokens {
        names: i.tokens.clone(),
        rows: i.embeddings.clone(),
        rows_2: i.rows_2().cloned(),
    };
    let tokens: Vec<LearnedTokens> = identities
        .iter()
        .map(|i| {
            crate::methods::sefi::staged_tokens(i)
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
