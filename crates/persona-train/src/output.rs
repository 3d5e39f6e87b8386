//! From a finished training run to an identity file (what generation applies from one is `persona_identity`).

use persona_diffusion::pipeline::StableDiffusion;

use crate::methods::Method;
use crate::trainer::TrainConfig;
use crate::Result;
use persona_identity::{BaseModel, Identity, IdentityMeta};

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
