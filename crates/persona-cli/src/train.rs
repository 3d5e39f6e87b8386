//! `persona train`: photos of a person → an identity file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_faces::ModelSearch;
use persona_train::captions::Captions;
use persona_train::checkpoint::checkpoint_path;
use persona_train::data::{load_folder, FaceLocator};
use persona_train::methods::{InitOptions, MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::trainer::{TrainConfig, Trainer};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    /// Textual Inversion: tokens start from an init word ("person"); diffusion loss only.
    Ti,
    /// Cross Initialization: tokens start from the celebrity-name anchor, with an L2 pull towards it.
    CrossInit,
}

/// Learns pseudo-tokens for the person in IMAGES (every jpg/png/webp in the folder). Each photo is cropped to
/// a square around the detected face (centre crop when no face or no detector is found; never stretched),
/// resized to --resolution and flipped at random. Checkpoints (identity + optimizer state) go to
/// OUT.ckpt.safetensors every --save-every steps; --resume continues from it to the same result an
/// uninterrupted run gives. The loss of every step is logged to OUT.loss.jsonl.
#[derive(Args, Debug)]
#[command(after_help = "Example (the paper settings on SD 2.1-base, a GPU-sized job):\n  \
persona train --model stabilityai/stable-diffusion-2-1-base --images photos/alice --token '<alice>' \\\n    \
--method cross-init --out alice.safetensors\nThen: persona generate --model … --identity alice.safetensors --prompt '{} wearing an oversized sweater' --out out/")]
pub struct TrainArgs {
    /// A diffusers pipeline folder or a cached hub id.
    #[arg(long)]
    model: String,
    /// Folder of photos of one person.
    #[arg(long)]
    images: PathBuf,
    /// Name of the identity; its pseudo-tokens are NAME_v0, NAME_v1, … (e.g. --token '<alice>').
    #[arg(long)]
    token: String,
    #[arg(long, value_enum)]
    method: Method,
    #[arg(long, default_value_t = 2)]
    num_tokens: usize,
    #[arg(long, default_value_t = 320)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Learning rate (default: the paper's effective value, 0.005, for both methods).
    #[arg(long)]
    lr: Option<f64>,
    /// Multiply --lr by batch size × accumulation (diffusers' --scale_lr).
    #[arg(long)]
    scale_lr: bool,
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Cross Init regulariser weight.
    #[arg(long, default_value_t = 1e-5)]
    reg_weight: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Celebrity names for the Cross Init anchor (default: the bundled 691-name list).
    #[arg(long)]
    names: Option<PathBuf>,
    /// Words to start from instead (TI default: "person"; Cross Init: replaces the celebrity anchor).
    #[arg(long)]
    init_words: Option<String>,
    /// Caption templates, one per line with {} (default: the bundled textual-inversion list).
    #[arg(long)]
    templates: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    resolution: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Continue from OUT.ckpt.safetensors.
    #[arg(long)]
    resume: bool,
    /// Do not look for a face detector; centre-crop every photo.
    #[arg(long)]
    no_face_crop: bool,
    /// Folder with face models (also $PERSONA_MODELS, ~/.cache/persona/models, ~/.insightface/models).
    #[arg(long)]
    models: Option<PathBuf>,
    #[arg(long)]
    variant: Option<String>,
    /// The identity file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.out.exists() && !a.resume {
        bail!("{} exists; choose another --out or remove it (nothing was overwritten)", a.out.display());
    }
    if a.resume && !checkpoint_path(&a.out).exists() {
        bail!("--resume: no checkpoint at {}", checkpoint_path(&a.out).display());
    }
    let sd = StableDiffusion::load(&a.model, &LoadOptions { variant: a.variant.clone() })?;
    let kind = match a.method {
        Method::Ti => MethodKind::Ti,
        Method::CrossInit => MethodKind::CrossInit,
    };
    let init = InitOptions { num_tokens: a.num_tokens, init_words: a.init_words.clone(), names: a.names.clone() };
    let method = TokenMethod::new(&sd, kind, &a.token, &init, a.reg_weight)?;
    let detector = if a.no_face_crop { None } else { find_detector(&a.models) };
    let locate = detector.as_ref().map(|d| {
        Box::new(move |img: &image::RgbImage| d.detect(img).ok().and_then(|f| persona_faces::largest(&f)).map(|f| f.bbox)) as Box<FaceLocator>
    });
    let samples = load_folder(&a.images, a.resolution, locate.as_deref(), &sd.device)?;
    let captions = Captions::new(a.templates.as_deref(), "face of {tokens} person")?;
    let cfg = TrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum.max(1),
        lr: a.lr.unwrap_or(0.005),
        scale_lr: a.scale_lr,
        schedule: match a.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Cosine => Schedule::Cosine,
        },
        warmup: a.warmup,
        adam: AdamWConfig { eps: a.adam_eps, ..Default::default() },
        seed: a.seed,
        save_every: a.save_every,
        resolution: a.resolution,
        out: a.out.clone(),
    };
    let hyper = serde_json::json!({"reg_weight": method.reg_weight, "num_tokens": a.num_tokens, "init_words": a.init_words});
    let mut trainer = Trainer::new(&sd, Box::new(method), samples, captions, a.seed)?;
    let mut opt = AdamW::new(trainer.method.vars(), cfg.adam)?;
    let start = if a.resume { trainer.resume(&cfg, &mut opt)? } else { 0 };
    let bar = crate::progress::bar(cfg.steps as u64, "training");
    bar.set_position(start as u64);
    trainer.run(&cfg, &mut opt, start, &mut |r| {
        bar.set_position(r.step as u64);
        bar.set_message(format!("training loss {:.4}", r.loss.total));
    })?;
    bar.finish_and_clear();
    let identity = persona_train::output::to_identity(&sd, &a.model, trainer.method.as_ref(), &cfg, &a.token, hyper)?;
    identity.save(&a.out).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} (checkpoint {}, loss log beside it)", a.out.display(), checkpoint_path(&a.out).display());
    Ok(())
}

fn find_detector(models: &Option<PathBuf>) -> Option<Box<dyn persona_faces::Detector>> {
    let search = ModelSearch { models_dir: models.clone(), ..Default::default() };
    match search.load_detector() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("no face detector ({e}); photos are centre-cropped");
            eprintln!("warning: no face detector found, photos are centre-cropped ({e})");
            None
        }
    }
}
