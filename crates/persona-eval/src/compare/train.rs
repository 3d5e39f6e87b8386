//! Training the identities a comparison is missing, through the training library's recipe: exactly what
//! `persona train` runs, with the same per-method defaults. Each shard trains in its own work folder
//! (checkpoints make it resumable) and moves the finished identity into place atomically; training is seeded,
//! so two shards that need the same identity produce the same file.

use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Error, Result};
use indicatif::ProgressBar;
use persona_diffusion::pipeline::StableDiffusion;
use persona_identity::Identity;
use persona_train::checkpoint::checkpoint_path;
use persona_train::optim::{AdamWConfig, Schedule};
use persona_train::recipe::{self, Recipe};
use persona_train::trainer::TrainConfig;

use super::face_search;
use super::manifest::{IdentityEntry, Manifest, MethodEntry};
use crate::results::TrainingCost;

/// `identities/<method>/<identity>.safetensors` under the output folder.
pub fn identity_path(out: &Path, method: &MethodEntry, identity: &IdentityEntry) -> PathBuf {
    out.join("identities")
        .join(method.identities_of.as_deref().unwrap_or(&method.name))
        .join(format!("{}.safetensors", identity.name))
}

/// The identity to evaluate: a file the manifest names, one trained before, or a new one.
pub fn ensure_identity(
    sd: &StableDiffusion,
    m: &Manifest,
    method: &MethodEntry,
    identity: &IdentityEntry,
    out: &Path,
    shard: &str,
    bar: &ProgressBar,
) -> Result<Identity> {
    let path = identity_path(out, method, identity);
    if let Some(file) = method
        .files
        .get(&identity.name)
        .or(Some(&path).filter(|p| p.is_file()))
    {
        bar.inc(method.steps(&m.train) as u64);
        let mut loaded =
            persona_identity::load(sd, std::slice::from_ref(file), false).map_err(Error::from)?;
        return Ok(loaded.remove(0));
    }
    if let Some(other) = &method.identities_of {
        bail!(
            "method {}: {} has no identity of {other} (identities_of); is {other} skipped in this shard?",
            method.name,
            path.display()
        );
    }
    bar.set_message(format!("training {} {}", method.name, identity.name));
    let work = out
        .join("train")
        .join(&method.name)
        .join(&identity.name)
        .join(shard)
        .join("identity.safetensors");
    std::fs::create_dir_all(work.parent().expect("has a parent"))
        .with_context(|| format!("creating {}", work.display()))?;
    let trained = train(sd, m, method, identity, &work, bar)?;
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .with_context(|| format!("creating {}", path.display()))?;
    trained
        .save(&work)
        .map_err(Error::from)
        .with_context(|| format!("writing {}", work.display()))?;
    std::fs::rename(&work, &path)
        .with_context(|| format!("moving {} to {}", work.display(), path.display()))?;
    Ok(trained)
}

fn train(
    sd: &StableDiffusion,
    m: &Manifest,
    method: &MethodEntry,
    identity: &IdentityEntry,
    work: &Path,
    bar: &ProgressBar,
) -> Result<Identity> {
    let name = method.method_name()?;
    let t = &m.train;
    let mut options = method.options.clone();
    options.num_tokens = options.num_tokens.or(t.num_tokens);
    let recipe = Recipe {
        method: name,
        token: identity.token(),
        images: identity.photos.clone(),
        options,
        faces: face_search(m),
        face_crop: !t.no_face_crop,
        templates: None,
        subject: m.train.subject.clone(),
    };
    let cfg = TrainConfig {
        steps: method.steps(t),
        batch_size: t.batch_size,
        grad_accum: 1,
        lr: method.lr.or(t.lr).unwrap_or(name.default_lr(t.batch_size)),
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig {
            eps: name.default_adam_eps(),
            ..Default::default()
        },
        seed: t.seed,
        save_every: t.save_every,
        resolution: t.resolution,
        repeats: t.repeats,
        out: work.to_path_buf(),
    };
    let resume = checkpoint_path(work).is_file();
    // Steps done before a resume count on the first report.
    let mut done = 0;
    Ok(recipe::train(
        sd,
        &m.model,
        &recipe,
        &cfg,
        resume,
        &mut |r| {
            bar.inc(r.step.saturating_sub(done) as u64);
            done = r.step;
        },
    )?)
}

/// The training cost of every (method, identity) of the manifest. Kept out of `results.json`, which is a pure
/// function of the scores (a sharded run equals a single one), while timings are not.
pub fn costs(m: &Manifest, out: &Path) -> Vec<TrainingCost> {
    let mut all = Vec::new();
    for method in &m.methods {
        for identity in &m.identities {
            let path = method
                .files
                .get(&identity.name)
                .cloned()
                .unwrap_or_else(|| identity_path(out, method, identity));
            let cost = Identity::load(&path)
                .ok()
                .map(|i| i.meta.hyper["method"]["cost"].clone())
                .unwrap_or_default();
            all.push(TrainingCost {
                method: method.name.clone(),
                identity: identity.name.clone(),
                seconds: cost["seconds"].as_f64(),
                steps: cost["steps"].as_u64(),
                peak_rss_gb: cost["peak_rss_gb"].as_f64(),
            });
        }
    }
    all
}
