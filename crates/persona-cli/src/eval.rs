//! `persona eval`: identity similarity, detection rate and prompt score of an identity's images.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use persona_eval::eval::{run_on, EvalConfig, ModelPlacement};
use persona_eval::prompts::PromptSet;
use persona_eval::protocol::Sampling;
use persona_faces::ModelSearch;

use crate::sampling_flags::{IdentityArgs, SamplingArgs};

/// Generates --images-per-prompt images per identity × prompt (image i from seed S+i) and scores each: faces
/// found, ID similarity to the references (the mean of their normalised face embeddings; for `{1}` prompts, whose
/// second identity is the next --identity cyclically, each identity against its best-matching face), CLIP
/// prompt score with placeholders removed. Writes results.json,
/// results.csv and report.html into --out; an interrupted run resumes where it stopped. With --images, scores
/// images made elsewhere instead (DIR/<prompt>/… or DIR/<identity>/<prompt>/…, the prompt from prompt.txt or
/// the folder name).
#[derive(Args, Debug)]
#[command(mut_arg("seed", |a| a.default_value("42")))]
#[command(
    after_help = "Examples:\n  persona eval --model stabilityai/stable-diffusion-2-1-base --identity alice.safetensors --prompts single \\\n    \
--scheduler ddim --steps 50 --guidance 10 --references photos/alice --out eval/alice\n  \
persona eval --images other-tool/alice --references photos/alice --out eval/other"
)]
pub struct EvalArgs {
    // Not the shared `ModelArgs`: --model is optional here (--images needs no model).
    /// A diffusers pipeline folder or a cached hub id (to generate; not needed with --images).
    #[arg(long)]
    model: Option<String>,
    /// Weight variant to load (e.g. fp16 for *.fp16.safetensors).
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    ids: IdentityArgs,
    /// A prompt file (one per line) or a set: style, single, with_celeb, double, expression, idea_examples.
    #[arg(long)]
    prompts: Option<String>,
    #[arg(long, default_value_t = 8)]
    images_per_prompt: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Square image size (default: the model's).
    #[arg(long)]
    resolution: Option<usize>,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Reference photos: one folder per identity (in --identity order), or one folder with a sub-folder per
    /// identity name.
    #[arg(long, required = true)]
    references: Vec<PathBuf>,
    /// Score the images in this folder instead of generating.
    #[arg(long)]
    images: Option<PathBuf>,
    /// A CLIP model folder (transformers layout); default: clip-vit-base-patch32 in the model folders or the
    /// Hugging Face cache; without one the prompt score is reported as missing.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Folder with face models (also $PERSONA_MODELS, ~/.cache/persona/models, ~/.insightface/models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Face detector: an SCRFD .onnx, one of MTCNN's pnet/rnet/onet.onnx, or a folder (default: found like
    /// every face model); or `none`: no detector, the whole image is the face (its centred square, resized to
    /// the recogniser's input), so the detection rate is 1 by construction. `none` is a keyword even if a
    /// file of that name exists (write ./none for the file).
    #[arg(long, value_name = "PATH|none")]
    detector: Option<PathBuf>,
    /// Face recogniser (.onnx: ArcFace or FaceNet); default: found like every face model.
    #[arg(long, value_name = "PATH")]
    recognizer: Option<PathBuf>,
    /// Round-trip images through JPEG quality 75 before scoring (as Celeb Basis did).
    #[arg(long)]
    jpeg75: bool,
    /// Also draw every prompt with its placeholders replaced by this phrase (e.g. "a person") and score it as
    /// method `baseline`: what the model draws without the identity, for comparison.
    #[arg(long, value_name = "PHRASE")]
    baseline: Option<String>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: crate::device_flags::DeviceArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    // Only a generating run loads a model (the face models and the CLIP scorer stay on the CPU).
    let place = match a.images {
        None => {
            let p = a.device.resolve()?;
            p.announce();
            ModelPlacement {
                device: p.device,
                dtype: p.dtype,
            }
        }
        Some(_) => ModelPlacement::default(),
    };
    let s = a.sampling;
    let cfg = EvalConfig {
        model: a.model,
        variant: a.variant,
        identities: a.ids.identity,
        force: a.ids.force,
        prompts: a.prompts.as_deref().map(PromptSet::resolve).transpose()?,
        sampling: Sampling {
            images_per_prompt: a.images_per_prompt,
            // The name the library parses back (the manifest's scheduler is text).
            scheduler: s.scheduler.map(|k| k.to_string()),
            steps: s.steps,
            guidance: s.guidance,
            seed: s.seed,
            negative_prompt: s.negative_prompt,
            resolution: a.resolution,
            batch_size: a.batch_size,
        },
        references: a.references,
        images: a.images,
        clip: a.clip,
        faces: ModelSearch {
            models_dir: a.models,
            detector: a.detector,
            recognizer: a.recognizer,
            ..Default::default()
        },
        jpeg: a.jpeg75,
        out: a.out.clone(),
        baseline: a.baseline,
    };
    let bar = crate::progress::bar(0, "evaluating");
    let results = run_on(&cfg, &place, &bar)?;
    bar.finish_and_clear();
    crate::compare::print_table(&results);
    eprintln!(
        "wrote {}/results.json, results.csv, report.html",
        a.out.display()
    );
    Ok(())
}
