//! `persona train --method idea`: the face embedding of the photos, then ID-EA (docs/idea.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use persona_diffusion::pipeline::StableDiffusion;
use persona_faces::{FaceAnalyzer, ModelSearch};
use persona_train::methods::idea::face::identity_embedding;
use persona_train::methods::idea::{kv, Idea, IdeaConfig, Regularizer};
use persona_train::methods::{InitOptions, Method};

/// The official ID-EA defaults that differ from the other methods'.
pub const LR_PER_SAMPLE: f64 = 0.0015;
pub const REG_WEIGHT: f64 = 8e-4;
pub const ADAM_EPS: f64 = 1e-7;

/// Flags only `--method idea` reads.
#[derive(Args, Debug)]
pub struct IdeaArgs {
    /// idea: face recogniser (.onnx: ArcFace or FaceNet); default: found like every face model (--models,
    /// $PERSONA_MODELS, ~/.cache/persona/models, ~/.insightface/models).
    #[arg(long)]
    recognizer: Option<PathBuf>,
    /// idea: also train low-rank deltas on every cross-attention to_k / to_v (saved in the identity file).
    #[arg(long)]
    train_cross_attn_kv: bool,
    /// idea: rank of those deltas.
    #[arg(long, default_value_t = kv::RANK)]
    kv_rank: usize,
    /// idea: regulariser: l2 (Cross Init's) or mahalanobis (the released code's degenerate form, docs/idea.md).
    #[arg(long, value_enum, default_value = "l2")]
    reg: RegArg,
    /// idea: attention heads of the Enhancer and the Adapter (must divide the text width).
    #[arg(long, default_value_t = 8)]
    idea_heads: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegArg {
    L2,
    Mahalanobis,
}

/// Settings shared with the other methods.
pub struct Common<'a> {
    pub token: &'a str,
    pub images: &'a Path,
    pub models: &'a Option<PathBuf>,
    pub init: InitOptions,
    pub reg_weight: f64,
    pub seed: u64,
}

/// The face embedding of the photos and the ID-EA method around it, with what the identity file records.
pub fn build<'a>(
    sd: &StableDiffusion,
    a: &IdeaArgs,
    c: Common,
) -> Result<(Box<dyn Method + 'a>, serde_json::Value)> {
    let search = ModelSearch {
        models_dir: c.models.clone(),
        recognizer: a.recognizer.clone(),
        ..Default::default()
    };
    let analyzer = FaceAnalyzer::from_search(&search)
        .context("ID-EA needs a face detector and a face recogniser")?;
    let recognizer = search.find_recognizer()?;
    let face_model = format!(
        "{:?} ({})",
        analyzer.recognizer().kind(),
        recognizer
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
    .to_lowercase();
    let embed = |img: &image::RgbImage| {
        analyzer
            .embed_largest(img)
            .map(|f| f.map(|(_, v)| v))
            .map_err(|e| persona_diffusion::Error::Msg(e.to_string()))
    };
    let (face, used) = identity_embedding(c.images, &embed, &sd.device)?;
    eprintln!("face embedding: {used} photo(s), {face_model}");
    let config = IdeaConfig {
        heads: a.idea_heads,
        reg: match a.reg {
            RegArg::L2 => Regularizer::L2,
            RegArg::Mahalanobis => Regularizer::Mahalanobis,
        },
        reg_weight: c.reg_weight,
        kv_rank: a.train_cross_attn_kv.then_some(a.kv_rank),
        ..IdeaConfig::new(c.init, c.seed)
    };
    let method = Idea::new(sd, c.token, config, face, face_model)?;
    let mut hyper = method.hyper();
    hyper["face_photos"] = used.into();
    Ok((Box::new(method), hyper))
}
