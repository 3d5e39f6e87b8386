//! `persona train`: photos of a person → an identity file.

mod idea;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_faces::ModelSearch;
use persona_train::captions::Captions;
use persona_train::checkpoint::checkpoint_path;
use persona_train::data::{load_folder, FaceLocator};
use persona_train::methods::sefi::{LayerSelect, Parameterisation, SefiMethod, SefiOptions, SubjectAttention, WithAttentionLoss};
use persona_train::methods::{InitOptions, MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::trainer::{TrainConfig, Trainer};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    /// Textual Inversion: tokens start from an init word ("person"); diffusion loss only.
    Ti,
    /// Cross Initialization: tokens start from the celebrity-name anchor, with an L2 pull towards it.
    CrossInit,
    /// SeFi-IDE: per-stage key/value tokens and the subject-wise attention loss (docs/sefi.md).
    Sefi,
    /// ID-EA: Cross Init tokens trained with an ID-Enhancer and an ID-Adapter over the face embedding of the
    /// photos (docs/idea.md).
    Idea,
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
    /// Pseudo-tokens (default 2; sefi: 1).
    #[arg(long)]
    num_tokens: Option<usize>,
    /// Optimizer steps (default 320; sefi: 600).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Learning rate (default: the paper's effective value, 0.005, for ti / cross-init; sefi: 1e-4 × batch
    /// size × accumulation, ProSpect's).
    #[arg(long)]
    lr: Option<f64>,
    /// Multiply --lr by batch size × accumulation (diffusers' --scale_lr).
    #[arg(long)]
    scale_lr: bool,
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Regulariser weight (default: cross-init 1e-5, idea 8e-4).
    #[arg(long)]
    reg_weight: Option<f64>,
    /// Adam epsilon (default 1e-8; idea 1e-7).
    #[arg(long)]
    adam_eps: Option<f64>,
    #[command(flatten)]
    idea: idea::IdeaArgs,
    /// Celebrity names for the Cross Init anchor (default: the bundled 691-name list).
    #[arg(long)]
    names: Option<PathBuf>,
    /// Words to start from instead (TI default: "person"; Cross Init: replaces the celebrity anchor).
    #[arg(long)]
    init_words: Option<String>,
    /// Caption templates, one per line with {} (default: the bundled textual-inversion list).
    #[arg(long)]
    templates: Option<PathBuf>,
    /// What each template's {} becomes; {tokens} is the pseudo-tokens (default "face of {tokens} person";
    /// sefi: "face of {tokens}", the paper's "a photo of the face of V*").
    #[arg(long)]
    subject: Option<String>,
    /// sefi: timestep stages, each with its own key and value embeddings (stage = ⌊t·S/1000⌋).
    #[arg(long, default_value_t = 5)]
    stages: usize,
    /// Weight λ of the subject-wise attention loss (sefi default 0.003; ti / cross-init: off unless given).
    #[arg(long)]
    attn_loss: Option<f64>,
    /// The class word: the attention loss's reference replaces the pseudo-tokens by it, and sefi's vectors start
    /// from it. One token: person, man, woman, dog, cat, car, …
    #[arg(long, default_value = "person")]
    class_word: String,
    /// Cross-attention layers of the attention loss: fractions of the latent side (1/2 and 1/4 are the 32×32
    /// and 16×16 layers at 512²), `all`, or module-path prefixes (`up_blocks.1`), comma separated.
    #[arg(long, default_value = LayerSelect::DEFAULT)]
    attn_layers: String,
    /// sefi: train the vectors directly, or through a ProSpect-style generator block.
    #[arg(long, value_enum, default_value = "direct")]
    sefi_param: SefiParam,
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
enum SefiParam {
    Direct,
    Generator,
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
    let sefi = matches!(a.method, Method::Sefi);
    let is_idea = matches!(a.method, Method::Idea);
    let (method, hyper) = build_method(&sd, &a)?;
    let detector = if a.no_face_crop { None } else { find_detector(&a.models) };
    let locate = detector.as_ref().map(|d| {
        Box::new(move |img: &image::RgbImage| d.detect(img).ok().and_then(|f| persona_faces::largest(&f)).map(|f| f.bbox)) as Box<FaceLocator>
    });
    let samples = load_folder(&a.images, a.resolution, locate.as_deref(), &sd.device)?;
    let subject = a.subject.as_deref().unwrap_or(if sefi { "face of {tokens}" } else { "face of {tokens} person" });
    let captions = Captions::new(a.templates.as_deref(), subject)?;
    let cfg = TrainConfig {
        steps: a.steps.unwrap_or(if sefi { 600 } else { 320 }),
        batch_size: a.batch_size,
        grad_accum: a.grad_accum.max(1),
        lr: a.lr.unwrap_or(match a.method {
            Method::Sefi => 1e-4 * (a.batch_size * a.grad_accum.max(1)) as f64,
            Method::Idea => idea::LR_PER_SAMPLE * (a.batch_size * a.grad_accum.max(1)) as f64,
            _ => 0.005,
        }),
        scale_lr: a.scale_lr,
        schedule: match a.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Cosine => Schedule::Cosine,
        },
        warmup: a.warmup,
        adam: AdamWConfig { eps: a.adam_eps.unwrap_or(if is_idea { idea::ADAM_EPS } else { 1e-8 }), ..Default::default() },
        seed: a.seed,
        save_every: a.save_every,
        resolution: a.resolution,
        out: a.out.clone(),
    };
    let mut trainer = Trainer::new(&sd, method, samples, captions, a.seed)?;
    let mut opt = AdamW::new(trainer.method.vars(), cfg.adam)?;
    let start = if a.resume { trainer.resume(&cfg, &mut opt)? } else { 0 };
    let bar = crate::progress::bar(cfg.steps as u64, "training");
    bar.set_position(start as u64);
    trainer.run(&cfg, &mut opt, start, &mut |r| {
        bar.set_position(r.step as u64);
        bar.set_message(format!("training loss {:.4}", r.loss.total));
    })?;
    bar.finish_and_clear();
    let face_model = hyper.get("face_model").and_then(|v| v.as_str()).map(String::from);
    let mut identity = persona_train::output::to_identity(&sd, &a.model, trainer.method.as_ref(), &cfg, &a.token, hyper)?;
    identity.meta.face_model = face_model;
    identity.save(&a.out).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} (checkpoint {}, loss log beside it)", a.out.display(), checkpoint_path(&a.out).display());
    Ok(())
}

/// The method and the hyper-parameters its identity file records.
fn build_method<'a>(sd: &StableDiffusion, a: &TrainArgs) -> Result<(Box<dyn persona_train::methods::Method + 'a>, serde_json::Value)> {
    let latent_side = a.resolution as usize / sd.vae_scale();
    let layers = LayerSelect::parse(&a.attn_layers, latent_side)?;
    let attention = |weight: f64| SubjectAttention::new(sd, &a.class_word, weight, layers.clone());
    let attn_hyper = |weight: f64| serde_json::json!({"attn_loss": weight, "class_word": a.class_word, "attn_layers": a.attn_layers});
    let kind = match a.method {
        Method::Ti => MethodKind::Ti,
        Method::CrossInit => MethodKind::CrossInit,
        Method::Idea => {
            let init = InitOptions { num_tokens: a.num_tokens.unwrap_or(2), init_words: a.init_words.clone(), names: a.names.clone() };
            let common = idea::Common {
                token: &a.token,
                images: &a.images,
                models: &a.models,
                init,
                reg_weight: a.reg_weight.unwrap_or(idea::REG_WEIGHT),
                seed: a.seed,
            };
            return idea::build(sd, &a.idea, common);
        }
        Method::Sefi => {
            let weight = a.attn_loss.unwrap_or(0.003);
            let parameterisation = match a.sefi_param {
                SefiParam::Direct => Parameterisation::Direct,
                SefiParam::Generator => Parameterisation::Generator,
            };
            let o = SefiOptions {
                stages: a.stages,
                num_tokens: a.num_tokens.unwrap_or(1),
                init_word: a.init_words.clone(),
                class_word: a.class_word.clone(),
                attn_weight: weight,
                layers,
                parameterisation,
                seed: a.seed,
            };
            let hyper = serde_json::json!({"stages": a.stages, "num_tokens": o.num_tokens, "init_words": a.init_words,
                "parameterisation": format!("{:?}", a.sefi_param).to_lowercase(), "attention": attn_hyper(weight)});
            return Ok((Box::new(SefiMethod::new(sd, &a.token, &o)?), hyper));
        }
    };
    let num_tokens = a.num_tokens.unwrap_or(2);
    let init = InitOptions { num_tokens, init_words: a.init_words.clone(), names: a.names.clone() };
    let method = TokenMethod::new(sd, kind, &a.token, &init, a.reg_weight.unwrap_or(1e-5))?;
    let mut hyper = serde_json::json!({"reg_weight": method.reg_weight, "num_tokens": num_tokens, "init_words": a.init_words});
    match a.attn_loss.filter(|&w| w != 0.0) {
        Some(weight) => {
            hyper["attention"] = attn_hyper(weight);
            let names = method.names.clone();
            Ok((Box::new(WithAttentionLoss::new(method, names, attention(weight)?)?), hyper))
        }
        None => Ok((Box::new(method), hyper)),
    }
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
