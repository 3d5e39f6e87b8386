//! Training the identities a comparison is missing, through the training library (the same loop as
//! `persona train`). Each shard trains in its own work folder (checkpoints make it resumable) and moves the
//! finished identity into place atomically; training is seeded, so two shards that need the same identity
//! produce the same file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use persona_diffusion::pipeline::StableDiffusion;
use persona_faces::ModelSearch;
use persona_train::captions::Captions;
use persona_train::checkpoint::checkpoint_path;
use persona_train::data::{load_folder, FaceLocator};
use persona_train::identity::Identity;
use persona_train::methods::{InitOptions, MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::trainer::{TrainConfig, Trainer};

use super::manifest::{IdentityEntry, Manifest, MethodEntry};

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `identities/<method>/<identity>.safetensors` under the output folder.
pub fn identity_path(out: &Path, method: &MethodEntry, identity: &IdentityEntry) -> PathBuf {
    out.join("identities").join(&method.name).join(format!("{}.safetensors", identity.name))
}

/// The identity to evaluate: a file the manifest names, one trained before, or a new one.
pub fn ensure_identity(sd: &StableDiffusion, m: &Manifest, method: &MethodEntry, identity: &IdentityEntry, out: &Path, shard: &str, bar: &ProgressBar) -> Result<Identity> {
    let path = identity_path(out, method, identity);
    if let Some(file) = method.files.get(&identity.name).or(Some(&path).filter(|p| p.is_file())) {
        bar.inc(m.train.steps as u64);
        let mut loaded = persona_train::output::load_identities(sd, std::slice::from_ref(file), false).map_err(err)?;
        return Ok(loaded.remove(0));
    }
    bar.set_message(format!("training {} {}", method.name, identity.name));
    let work = out.join("train").join(&method.name).join(&identity.name).join(shard).join("identity.safetensors");
    std::fs::create_dir_all(work.parent().expect("has a parent")).with_context(|| format!("creating {}", work.display()))?;
    let trained = train(sd, m, method, identity, &work, bar)?;
    std::fs::create_dir_all(path.parent().expect("has a parent")).with_context(|| format!("creating {}", path.display()))?;
    trained.save(&work).map_err(err).with_context(|| format!("writing {}", work.display()))?;
    std::fs::rename(&work, &path).with_context(|| format!("moving {} to {}", work.display(), path.display()))?;
    Ok(trained)
}

fn train(sd: &StableDiffusion, m: &Manifest, method: &MethodEntry, identity: &IdentityEntry, work: &Path, bar: &ProgressBar) -> Result<Identity> {
    let kind: MethodKind = method.training_method().parse().map_err(err).with_context(|| {
        format!("method {}: this version trains ti and cross-init; give other methods' identity files with `files`", method.name)
    })?;
    let t = &m.train;
    let init = InitOptions { num_tokens: t.num_tokens, init_words: method.init_words.clone(), names: None };
    let token_method = TokenMethod::new(sd, kind, &identity.token(), &init, method.reg_weight).map_err(err)?;
    let detector = if t.no_face_crop { None } else { ModelSearch { models_dir: m.face_models.clone(), ..Default::default() }.load_detector().ok() };
    let locate = detector.as_ref().map(|d| {
        Box::new(move |img: &image::RgbImage| d.detect(img).ok().and_then(|f| persona_faces::largest(&f)).map(|f| f.bbox)) as Box<FaceLocator>
    });
    let samples = load_folder(&identity.photos, t.resolution, locate.as_deref(), &sd.device).map_err(err)?;
    let captions = Captions::new(None, "face of {tokens} person").map_err(err)?;
    let cfg = TrainConfig {
        steps: t.steps,
        batch_size: t.batch_size,
        grad_accum: 1,
        lr: method.lr.unwrap_or(t.lr),
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig::default(),
        seed: t.seed,
        save_every: t.save_every,
        resolution: t.resolution,
        out: work.to_path_buf(),
    };
    let hyper = serde_json::json!({"reg_weight": token_method.reg_weight, "num_tokens": t.num_tokens, "init_words": method.init_words});
    let mut trainer = Trainer::new(sd, Box::new(token_method), samples, captions, t.seed).map_err(err)?;
    let mut opt = AdamW::new(trainer.method.vars(), cfg.adam).map_err(err)?;
    let start = if checkpoint_path(work).is_file() { trainer.resume(&cfg, &mut opt).map_err(err)? } else { 0 };
    bar.inc(start as u64);
    let mut last = start;
    trainer
        .run(&cfg, &mut opt, start, &mut |r| {
            bar.inc(r.step.saturating_sub(last) as u64);
            last = r.step;
        })
        .map_err(err)?;
    persona_train::output::to_identity(sd, &m.model, trainer.method.as_ref(), &cfg, &identity.token(), hyper).map_err(err)
}
