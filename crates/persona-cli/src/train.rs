//! `persona train`: photos of a person → an identity file. The flags map onto the training library's
//! [`Recipe`], which `persona compare` runs too.

use std::path::PathBuf;

use crate::sampling_flags::ModelArgs;
use crate::values;
use anyhow::{bail, Context, Result};
use clap::Args;
use persona_diffusion::pipeline::StableDiffusion;
use persona_faces::ModelSearch;
use persona_train::checkpoint::checkpoint_path;
use persona_train::methods::idea::Regularizer;
use persona_train::methods::sefi::LayerSelect;
use persona_train::optim::{AdamWConfig, Schedule};
use persona_train::recipe::{self, MethodName, MethodOptions, Recipe, SefiParam};
use persona_train::trainer::TrainConfig;

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
    #[command(flatten)]
    base: ModelArgs,
    /// Folder of photos of one person.
    #[arg(long)]
    images: PathBuf,
    /// Name of the identity; its pseudo-tokens are NAME_v0, NAME_v1, … (e.g. --token '<alice>').
    #[arg(long)]
    token: String,
    #[arg(long, value_enum)]
    method: MethodName,
    #[arg(long, help = per_method("Pseudo-tokens", |m| m.default_num_tokens().to_string()))]
    num_tokens: Option<usize>,
    #[arg(long, value_parser = values::positive, help = per_method("Optimizer steps", |m| m.default_steps().to_string()))]
    steps: Option<usize>,
    #[arg(long, default_value_t = 8, value_parser = values::positive)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = values::positive)]
    grad_accum: usize,
    #[arg(long, value_parser = values::positive_real, allow_negative_numbers = true, help = per_method("Learning rate", default_lr))]
    lr: Option<f64>,
    /// Multiply --lr by batch size × accumulation (diffusers' --scale_lr).
    #[arg(long)]
    scale_lr: bool,
    #[arg(long, value_enum, default_value = "constant")]
    schedule: Schedule,
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    #[arg(long, value_parser = values::non_negative, allow_negative_numbers = true, help = per_method("Regulariser weight", |m| num(m.default_reg_weight())))]
    reg_weight: Option<f64>,
    #[arg(long, value_parser = values::positive_real, allow_negative_numbers = true, help = per_method("Adam epsilon", |m| num(m.default_adam_eps())))]
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
    reg: Regularizer,
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
    #[arg(long, help = per_method("What each template's {} becomes; {tokens} is the pseudo-tokens (SeFi-IDE's is the paper's \"a photo of the face of V*\")", |m| format!("{:?}", m.default_subject())))]
    subject: Option<String>,
    /// sefi: timestep stages, each with its own key and value embeddings (stage = ⌊t·S/1000⌋).
    #[arg(long, default_value_t = 5)]
    stages: usize,
    #[arg(long, value_parser = values::non_negative, allow_negative_numbers = true, help = per_method("Weight λ of the subject-wise attention loss", |m| m.default_attn_loss().map_or("off".into(), |w| w.to_string())))]
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
    /// The identity file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: crate::device_flags::DeviceArgs,
}

/// A method's default learning rate as a formula of the samples per step (batch size × accumulation).
fn default_lr(m: MethodName) -> String {
    let one = m.default_lr(1);
    if m.default_lr(2) == one {
        num(one)
    } else {
        format!("{} × batch size × accumulation", num(one))
    }
}

/// `0.005`, `1e-5`: small values in scientific notation, as the papers write them.
fn num(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// A flag's help with each method's default, read from [`MethodName`] (their one home).
fn per_method(what: &str, default: impl Fn(MethodName) -> String) -> String {
    let defaults: Vec<String> = MethodName::ALL
        .iter()
        .map(|&m| format!("{m} {}", default(m)))
        .collect();
    format!("{what} (default, per method: {})", defaults.join(", "))
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
    let sd = StableDiffusion::load(&a.base.model, &place.load_options(a.base.variant.clone()))?;
    place.announce();
    let r = recipe_of(&a);
    let resolution = a.resolution.unwrap_or(if sd.is_sdxl() {
        sd.default_size() as u32
    } else {
        512
    });
    let cfg = config_of(&a, r.method, resolution);
    let bar = crate::progress::bar(cfg.steps as u64, "training");
    let identity = recipe::train(&sd, &a.base.model, &r, &cfg, a.resume, &mut |s| {
        bar.set_position(s.step as u64);
        bar.set_message(format!("training loss {:.4}", s.loss.total));
    })?;
    bar.finish_and_clear();
    if let Some(face_model) = &identity.meta.face_model {
        let photos = &identity.meta.hyper["method"]["face_photos"];
        eprintln!("face embedding: {photos} photo(s), {face_model}");
    }
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
    let options = MethodOptions {
        num_tokens: a.num_tokens,
        init_words: a.init_words.clone(),
        names: a.names.clone(),
        reg_weight: a.reg_weight,
        attn_loss: a.attn_loss,
        class_word: a.class_word.clone(),
        attn_layers: a.attn_layers.clone(),
        stages: a.stages,
        sefi_param: a.sefi_param,
        idea_heads: a.idea_heads,
        reg: a.reg,
        kv_rank: a.train_cross_attn_kv.then_some(a.kv_rank),
    };
    Recipe {
        method: a.method,
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
        schedule: a.schedule,
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

/// The flag → recipe mapping, parsed from argv as a user types it: each method's paper defaults, the options
/// passed through, the whole-image detector `none`, the subject.
#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn parse(extra: &[&str]) -> TrainArgs {
        let base = [
            "persona", "--model", "m", "--images", "photos", "--token", "<alice>",
        ];
        let argv = base
            .iter()
            .chain(extra)
            .chain(&["--out", "alice.safetensors"]);
        Cli::try_parse_from(argv).unwrap().train
    }

    #[test]
    fn each_method_gets_its_paper_defaults() {
        for (method, steps, lr, eps) in [
            ("ti", 320, 0.005, 1e-8),
            ("cross-init", 320, 0.005, 1e-8),
            ("sefi", 600, 1e-4 * 8.0, 1e-8),
            ("idea", 320, 0.0015 * 8.0, 1e-7),
        ] {
            let a = parse(&["--method", method]);
            let r = recipe_of(&a);
            assert_eq!(r.method.name(), method);
            assert_eq!(r.options, MethodOptions::default(), "{method}");
            assert!(r.subject.is_none() && r.face_crop && r.faces.detector.is_none());
            let cfg = config_of(&a, r.method, 512);
            assert_eq!(cfg.steps, steps, "{method}");
            assert!((cfg.lr - lr).abs() < 1e-12, "{method}: {}", cfg.lr);
            assert_eq!(cfg.adam.eps, eps, "{method}");
            assert_eq!((cfg.batch_size, cfg.grad_accum, cfg.repeats), (8, 1, 100));
            assert_eq!(
                (cfg.schedule, cfg.seed, cfg.resolution),
                (Schedule::Constant, 0, 512)
            );
            assert_eq!(cfg.out, PathBuf::from("alice.safetensors"));
        }
    }

    #[test]
    fn the_lr_scales_with_the_samples_per_step_unless_given() {
        let a = parse(&["--method", "idea", "--batch-size", "2", "--grad-accum", "3"]);
        let cfg = config_of(&a, MethodName::Idea, 512);
        assert!((cfg.lr - 0.0015 * 6.0).abs() < 1e-12);
        let a = parse(&[
            "--method",
            "idea",
            "--lr",
            "0.1",
            "--scale-lr",
            "--steps",
            "7",
        ]);
        let cfg = config_of(&a, MethodName::Idea, 512);
        assert_eq!((cfg.lr, cfg.scale_lr, cfg.steps), (0.1, true, 7));
    }

    #[test]
    fn options_reach_the_recipe() {
        let a = parse(&[
            "--method",
            "sefi",
            "--num-tokens",
            "3",
            "--init-words",
            "a man",
            "--reg-weight",
            "0.5",
            "--attn-loss",
            "0",
            "--class-word",
            "dog",
            "--attn-layers",
            "all",
            "--stages",
            "4",
            "--sefi-param",
            "generator",
            "--reg",
            "mahalanobis",
            "--idea-heads",
            "4",
            "--train-cross-attn-kv",
            "--kv-rank",
            "2",
            "--schedule",
            "cosine",
            "--warmup",
            "5",
            "--adam-eps",
            "1e-6",
            "--seed",
            "9",
            "--resolution",
            "64",
        ]);
        let r = recipe_of(&a);
        let want = MethodOptions {
            num_tokens: Some(3),
            init_words: Some("a man".into()),
            names: None,
            reg_weight: Some(0.5),
            attn_loss: Some(0.0),
            class_word: "dog".into(),
            attn_layers: "all".into(),
            stages: 4,
            sefi_param: SefiParam::Generator,
            idea_heads: 4,
            reg: Regularizer::Mahalanobis,
            kv_rank: Some(2),
        };
        assert_eq!(r.options, want);
        let cfg = config_of(&a, r.method, a.resolution.unwrap());
        assert_eq!(
            (cfg.schedule, cfg.warmup, cfg.adam.eps),
            (Schedule::Cosine, 5, 1e-6)
        );
        assert_eq!((cfg.seed, cfg.resolution), (9, 64));
        // Without --train-cross-attn-kv, --kv-rank alone trains no deltas.
        let r = recipe_of(&parse(&["--method", "idea", "--kv-rank", "2"]));
        assert_eq!(r.options.kv_rank, None);
    }

    #[test]
    fn detector_none_subject_and_face_models_reach_the_recipe() {
        let a = parse(&[
            "--method",
            "idea",
            "--detector",
            "none",
            "--recognizer",
            "r.onnx",
            "--models",
            "dir",
            "--subject",
            "{tokens}",
            "--templates",
            "t.txt",
            "--names",
            "n.txt",
        ]);
        let r = recipe_of(&a);
        assert!(r.faces.whole_image());
        assert_eq!(r.faces.recognizer, Some(PathBuf::from("r.onnx")));
        assert_eq!(r.faces.models_dir, Some(PathBuf::from("dir")));
        assert_eq!(r.subject.as_deref(), Some("{tokens}"));
        assert_eq!(r.templates, Some(PathBuf::from("t.txt")));
        assert_eq!(r.options.names, Some(PathBuf::from("n.txt")));
        assert_eq!(
            (r.token.as_str(), r.images.as_path()),
            ("<alice>", std::path::Path::new("photos"))
        );
        assert!(!recipe_of(&parse(&["--method", "ti", "--no-face-crop"])).face_crop);
    }

    #[test]
    fn flags_no_run_can_use_are_refused() {
        for bad in [
            &["--method", "nope"][..],
            &["--method", "ti", "--steps", "0"],
            &["--method", "ti", "--reg", "l1"],
            &["--method", "ti", "--schedule", "linear"],
        ] {
            let base = [
                "persona", "--model", "m", "--images", "p", "--token", "<a>", "--out", "o",
            ];
            assert!(
                Cli::try_parse_from(base.iter().chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
