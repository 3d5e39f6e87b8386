//! `persona train`: photos of a person → an identity file. The flags map onto the training library's
//! [`Recipe`], which `persona compare` runs too.

use std::path::PathBuf;

use crate::values;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use persona_diffusion::pipeline::StableDiffusion;
use persona_faces::ModelSearch;
use persona_train::checkpoint::checkpoint_path;
use persona_train::methods::idea::Regularizer;
use persona_train::methods::sefi::LayerSelect;
use persona_train::optim::{AdamWConfig, Schedule};
use persona_train::recipe::{self, MethodName, MethodOptions, Recipe, SefiParam};
use persona_train::trainer::TrainConfig;

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
/// a square around the detected face (centre crop when no face or no detector is found, or with --detector
/// none; never stretched), resized to --resolution and flipped at random. Checkpoints (identity + optimizer
/// state) go to OUT.ckpt.safetensors every --save-every steps; --resume continues from it to the same result an
/// uninterrupted run gives. The loss of every step is logged to OUT.loss.jsonl.
#[derive(Args, Debug)]
#[command(
    after_help = "Example (the paper settings on SD 2.1-base, a GPU-sized job):\n  \
persona train --model stabilityai/stable-diffusion-2-1-base --images photos/alice --token '<alice>' \\\n    \
--method cross-init --out alice.safetensors\n\
SDXL (every method; both token tables are learned, docs/sdxl.md):\n  \
persona train --model stabilityai/stable-diffusion-xl-base-1.0 --images photos/alice --token '<alice>' --method ti --out alice-xl.safetensors\n\
Then: persona generate --model … --identity alice.safetensors --prompt '{} wearing an oversized sweater' --out out/"
)]
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
    #[arg(long, value_parser = values::positive)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 8, value_parser = values::positive)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = values::positive)]
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
    /// idea: face recogniser (.onnx: ArcFace or FaceNet); default: found like every face model (--models,
    /// $PERSONA_MODELS, ~/.cache/persona/models, ~/.insightface/models).
    #[arg(long)]
    recognizer: Option<PathBuf>,
    /// idea: also train low-rank deltas on every cross-attention to_k / to_v (saved in the identity file).
    #[arg(long)]
    train_cross_attn_kv: bool,
    /// idea: rank of those deltas.
    #[arg(long, default_value_t = recipe::KV_RANK)]
    kv_rank: usize,
    /// idea: regulariser: l2 (Cross Init's) or mahalanobis (the released code's degenerate form, docs/idea.md).
    #[arg(long, value_enum, default_value = "l2")]
    reg: RegArg,
    /// idea: attention heads of the Enhancer and the Adapter (must divide the text width).
    #[arg(long, default_value_t = 8)]
    idea_heads: usize,
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
    sefi_param: SefiParamArg,
    /// Training image side in pixels (default 512; SDXL: the model's own, 1024 for SDXL base).
    #[arg(long)]
    resolution: Option<u32>,
    /// Photos per epoch = photos × repeats, drawn in a seeded shuffled order so that every photo is seen
    /// equally often (diffusers' --repeats).
    #[arg(long, default_value_t = 100, value_parser = values::positive)]
    repeats: usize,
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
    /// Face detector for the crop (and ID-EA's face embedding): an SCRFD .onnx, one of MTCNN's
    /// pnet/rnet/onet.onnx, or a folder (default: found like every face model); or `none`: no detector,
    /// the whole photo is the face — photos are centre-cropped and ID-EA embeds the whole photo (its
    /// centred square, resized to the recogniser's input). `none` is a keyword even if a file of that name
    /// exists (write ./none for the file).
    #[arg(long, value_name = "PATH|none")]
    detector: Option<PathBuf>,
    /// Folder with face models (also $PERSONA_MODELS, ~/.cache/persona/models, ~/.insightface/models).
    #[arg(long)]
    models: Option<PathBuf>,
    #[arg(long)]
    variant: Option<String>,
    /// The identity file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: crate::device_flags::DeviceArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SefiParamArg {
    Direct,
    Generator,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegArg {
    L2,
    Mahalanobis,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.out.exists() && !a.resume {
        bail!(
            "{} exists; choose another --out or remove it (nothing was overwritten)",
            a.out.display()
        );
    }
    let ckpt = checkpoint_path(&a.out);
    if a.resume && !ckpt.exists() {
        bail!("--resume: no checkpoint at {}", ckpt.display());
    }
    if !a.resume && ckpt.exists() {
        bail!(
            "{} exists (another run's checkpoint for --out {}); pass --resume to continue it, or remove it to start afresh (nothing was overwritten)",
            ckpt.display(),
            a.out.display()
        );
    }
    crate::output::check_writable(
        a.out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new(".")),
        "--out",
    )?;
    // Held until this function returns (also on every error): a second run onto the same --out fails here.
    let _lock = crate::output::RunLock::acquire(&a.out, "--out")?;
    let _ckpt_lock = crate::output::RunLock::acquire(&ckpt, "the checkpoint")?;
    if a.resume && a.out.exists() {
        if let Some(step) = finished_step(&ckpt)? {
            eprintln!(
                "{} is already trained ({step} steps, checkpoint {}); nothing to resume, nothing changed",
                a.out.display(),
                ckpt.display()
            );
            return Ok(());
        }
    }
    let place = a.device.resolve()?;
    let sd = StableDiffusion::load(&a.model, &place.load_options(a.variant.clone()))?;
    place.announce();
    let r = recipe_of(&a);
    let resolution = a.resolution.unwrap_or(if sd.is_sdxl() {
        sd.default_size() as u32
    } else {
        512
    });
    let cfg = config_of(&a, r.method, resolution);
    let bar = crate::progress::bar(cfg.steps as u64, "training");
    let identity = recipe::train(&sd, &a.model, &r, &cfg, a.resume, &mut |s| {
        bar.set_position(s.step as u64);
        bar.set_message(format!("training loss {:.4}", s.loss.total));
    })?;
    bar.finish_and_clear();
    let mut identity = identity;
    identity.meta.hyper["device"] = place.device_name().into();
    identity.meta.hyper["dtype"] = place.dtype_name().into();
    identity
        .save(&a.out)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", a.out.display()))?;
    let cost = &identity.meta.hyper["method"]["cost"];
    eprintln!(
        "wrote {} (checkpoint {}, loss log beside it); {} steps in {:.1} s on {} ({}), peak memory {:.2} GB",
        a.out.display(),
        checkpoint_path(&a.out).display(),
        cost["steps"],
        cost["seconds"].as_f64().unwrap_or(f64::NAN),
        place.device_name(),
        place.dtype_name(),
        cost["peak_rss_gb"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// The step of a checkpoint whose run reached its last step (`None` while unfinished).
fn finished_step(ckpt: &std::path::Path) -> Result<Option<usize>> {
    let (_, meta) = persona_train::checkpoint::load(ckpt)?;
    let step = meta.get("step").and_then(|s| s.parse::<usize>().ok());
    let steps = meta
        .get("config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|c| c["steps"].as_u64())
        .map(|s| s as usize);
    Ok(match (step, steps) {
        (Some(step), Some(steps)) if step >= steps => Some(step),
        _ => None,
    })
}

fn recipe_of(a: &TrainArgs) -> Recipe {
    let method = match a.method {
        Method::Ti => MethodName::Ti,
        Method::CrossInit => MethodName::CrossInit,
        Method::Sefi => MethodName::Sefi,
        Method::Idea => MethodName::Idea,
    };
    let options = MethodOptions {
        num_tokens: a.num_tokens,
        init_words: a.init_words.clone(),
        names: a.names.clone(),
        reg_weight: a.reg_weight,
        attn_loss: a.attn_loss,
        class_word: a.class_word.clone(),
        attn_layers: a.attn_layers.clone(),
        stages: a.stages,
        sefi_param: match a.sefi_param {
            SefiParamArg::Direct => SefiParam::Direct,
            SefiParamArg::Generator => SefiParam::Generator,
        },
        idea_heads: a.idea_heads,
        reg: match a.reg {
            RegArg::L2 => Regularizer::L2,
            RegArg::Mahalanobis => Regularizer::Mahalanobis,
        },
        kv_rank: a.train_cross_attn_kv.then_some(a.kv_rank),
    };
    Recipe {
        method,
        token: a.token.clone(),
        images: a.images.clone(),
        options,
        faces: ModelSearch {
            models_dir: a.models.clone(),
            detector: a.detector.clone(),
            recognizer: a.recognizer.clone(),
            ..Default::default()
        },
        face_crop: !a.no_face_crop,
        templates: a.templates.clone(),
        subject: a.subject.clone(),
    }
}

fn config_of(a: &TrainArgs, method: MethodName, resolution: u32) -> TrainConfig {
    let accum = a.grad_accum.max(1);
    TrainConfig {
        steps: a.steps.unwrap_or(method.default_steps()),
        batch_size: a.batch_size,
        grad_accum: accum,
        lr: a.lr.unwrap_or(method.default_lr(a.batch_size * accum)),
        scale_lr: a.scale_lr,
        schedule: match a.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Cosine => Schedule::Cosine,
        },
        warmup: a.warmup,
        adam: AdamWConfig {
            eps: a.adam_eps.unwrap_or(method.default_adam_eps()),
            ..Default::default()
        },
        seed: a.seed,
        save_every: a.save_every,
        resolution,
        repeats: a.repeats,
        out: a.out.clone(),
    }
}
