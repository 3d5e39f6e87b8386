//! One identity's training, from photos to the identity file, as `persona train` and `persona compare` both
//! run it: the method with its options and the defaults of its paper, the photos cropped around the face, the
//! captions, the loop with checkpoints and resume. Keeping it here means a method trained by `compare` is the
//! very method `train` trains.

use std::path::PathBuf;
use std::str::FromStr;

use persona_diffusion::pipeline::StableDiffusion;
use persona_faces::{FaceAnalyzer, ModelSearch};
use serde::{Deserialize, Serialize};

use crate::captions::Captions;
use crate::checkpoint::checkpoint_path;
use crate::data::{load_folder, FaceLocator, Sample};
use crate::methods::idea::face::identity_embedding;
use crate::methods::idea::{Idea, IdeaConfig, Regularizer};
use crate::methods::sefi::{
    LayerSelect, Parameterisation, SefiMethod, SefiOptions, SubjectAttention, WithAttentionLoss,
};
use crate::methods::{InitOptions, Method, MethodKind, TokenMethod};
use crate::optim::AdamW;
use crate::trainer::{StepReport, TrainConfig, Trainer};
use crate::{Error, Result};
use persona_identity::kv;
use persona_identity::Identity;

/// The methods a person can be trained with: the one home of each method's name and of the defaults of its
/// paper (`persona train`, its help, `persona compare` and `persona demo` all read them here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MethodName {
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

impl FromStr for MethodName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
                Error::Msg(format!("unknown method {s:?} ({})", names.join(", ")))
            })
    }
}

impl std::fmt::Display for MethodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl MethodName {
    pub const ALL: [Self; 4] = [Self::Ti, Self::CrossInit, Self::Sefi, Self::Idea];

    /// The name on the command line, in manifests and in identity files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ti => "ti",
            Self::CrossInit => "cross-init",
            Self::Sefi => "sefi",
            Self::Idea => "idea",
        }
    }

    /// Optimizer steps: the papers' 320 (Cross Init, ID-EA), SeFi-IDE's 600.
    pub fn default_steps(self) -> usize {
        if self == Self::Sefi {
            600
        } else {
            320
        }
    }

    /// The learning rate for `samples` images per optimizer step: Cross Init's effective 0.005; ProSpect's
    /// 1e-4 and ID-EA's 0.0015, both scaled by the samples per step as their code does.
    pub fn default_lr(self, samples: usize) -> f64 {
        match self {
            Self::Ti | Self::CrossInit => 0.005,
            Self::Sefi => 1e-4 * samples as f64,
            Self::Idea => 0.0015 * samples as f64,
        }
    }

    /// Adam's ε: ID-EA's official 1e-7, PyTorch's 1e-8 otherwise.
    pub fn default_adam_eps(self) -> f64 {
        if self == Self::Idea {
            1e-7
        } else {
            1e-8
        }
    }

    /// What each caption template's `{}` becomes: SeFi-IDE's "a photo of the face of V*" has no class word.
    pub fn default_subject(self) -> &'static str {
        if self == Self::Sefi {
            "face of {tokens}"
        } else {
            "face of {tokens} person"
        }
    }

    /// Pseudo-tokens: SeFi-IDE's single V*, two otherwise (Cross Init, ID-EA).
    pub fn default_num_tokens(self) -> usize {
        if self == Self::Sefi {
            1
        } else {
            2
        }
    }

    /// The weight of the pull towards the anchor: Cross Init's 1e-5, ID-EA's 8e-4; TI and SeFi-IDE have none.
    pub fn default_reg_weight(self) -> f64 {
        match self {
            Self::CrossInit => 1e-5,
            Self::Idea => 8e-4,
            Self::Ti | Self::Sefi => 0.0,
        }
    }

    /// λ of the subject-wise attention loss: SeFi-IDE's 0.003; off for the others unless asked for.
    pub fn default_attn_loss(self) -> Option<f64> {
        (self == Self::Sefi).then_some(0.003)
    }
}

/// How the SeFi-IDE vectors are parameterised (serialisable form of [`Parameterisation`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SefiParam {
    #[default]
    Direct,
    Generator,
}

/// Every method option, with the defaults of `persona train`; each method reads its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodOptions {
    /// Pseudo-tokens (default: [`MethodName::default_num_tokens`]).
    pub num_tokens: Option<usize>,
    /// TI: the init words ("person"); Cross Init / ID-EA: words replacing the celebrity anchor; SeFi: the
    /// word its vectors start from (the class word).
    pub init_words: Option<String>,
    /// Celebrity names file of the Cross Init anchor (default: the bundled list).
    pub names: Option<PathBuf>,
    /// Regulariser weight (default: [`MethodName::default_reg_weight`]).
    pub reg_weight: Option<f64>,
    /// λ of the subject-wise attention loss (default: [`MethodName::default_attn_loss`]).
    pub attn_loss: Option<f64>,
    pub class_word: String,
    pub attn_layers: String,
    pub stages: usize,
    pub sefi_param: SefiParam,
    /// ID-EA attention heads of the Enhancer and the Adapter.
    pub idea_heads: usize,
    pub reg: Regularizer,
    /// ID-EA: rank of low-rank deltas on every cross-attention to_k / to_v (`None`: not trained).
    pub kv_rank: Option<usize>,
}

impl Default for MethodOptions {
    fn default() -> Self {
        Self {
            num_tokens: None,
            init_words: None,
            names: None,
            reg_weight: None,
            attn_loss: None,
            class_word: "person".into(),
            attn_layers: LayerSelect::DEFAULT.into(),
            stages: 5,
            sefi_param: SefiParam::Direct,
            idea_heads: 8,
            reg: Regularizer::L2,
            kv_rank: None,
        }
    }
}

/// The default rank of ID-EA's key/value deltas.
pub const KV_RANK: usize = kv::RANK;

/// One identity to train.
pub struct Recipe {
    pub method: MethodName,
    /// The identity's name; its pseudo-tokens are `NAME_v0`, `NAME_v1`, ….
    pub token: String,
    pub images: PathBuf,
    pub options: MethodOptions,
    /// Where the face detector (for the crop) and the recogniser (for ID-EA) are found.
    pub faces: ModelSearch,
    /// Crop around the detected face; otherwise (or without a detector, or with the whole-image
    /// "detector" `none`) a centre crop.
    pub face_crop: bool,
    /// Caption templates file (default: the bundled textual-inversion list).
    pub templates: Option<PathBuf>,
    /// What `{}` becomes (default: [`MethodName::default_subject`]).
    pub subject: Option<String>,
}

/// A built method and what its identity file records about it.
pub struct Built<'a> {
    pub method: Box<dyn Method + 'a>,
    pub hyper: serde_json::Value,
    /// The recogniser of ID-EA's face embedding.
    pub face_model: Option<String>,
}

/// Trains the recipe's identity with `cfg` (continuing from `cfg.out`'s checkpoint when `resume`), reporting
/// every step; the identity is returned, not written. Its hyper-parameters record what the training cost
/// (`method.cost`: seconds and steps of all runs of this output, resumes included, the process's peak resident memory), the spec's time per
/// identity and peak memory.
pub fn train(
    sd: &StableDiffusion,
    model: &str,
    r: &Recipe,
    cfg: &TrainConfig,
    resume: bool,
    report: &mut dyn FnMut(StepReport),
) -> Result<Identity> {
    if resume && !checkpoint_path(&cfg.out).is_file() {
        return Err(Error::Msg(format!(
            "no checkpoint to resume at {}",
            checkpoint_path(&cfg.out).display()
        )));
    }
    let built = build(sd, r, cfg.resolution, cfg.seed)?;
    let samples = photos(sd, r, cfg.resolution)?;
    let subject = r.subject.as_deref().unwrap_or(r.method.default_subject());
    let captions = Captions::new(r.templates.as_deref(), subject)?;
    let mut trainer = Trainer::new(sd, built.method, samples, captions, cfg.seed)?;
    let mut opt = AdamW::new(trainer.method.vars(), cfg.adam)?;
    let start = if resume {
        trainer.resume(cfg, &mut opt)?
    } else {
        0
    };
    trainer.run(cfg, &mut opt, start, report)?;
    let mut hyper = built.hyper;
    // Seconds and steps of all the runs that trained this output (resumes included); this run's steps apart.
    hyper["cost"] = serde_json::json!({
        "seconds": trainer.total_seconds(),
        "steps": cfg.steps,
        "steps_this_run": cfg.steps.saturating_sub(start),
        "peak_rss_gb": peak_rss_gb(),
    });
    let mut identity =
        crate::output::to_identity(sd, model, trainer.method.as_ref(), cfg, &r.token, hyper)?;
    identity.meta.face_model = built.face_model;
    Ok(identity)
}

pub use persona_diffusion::device::peak_rss_gb;

/// The training photos, cropped around the largest detected face when a detector is found. In whole-image
/// mode (`--detector none`) the photo is the face: centre-cropped, as without a detector.
pub fn photos(sd: &StableDiffusion, r: &Recipe, resolution: u32) -> Result<Vec<Sample>> {
    let detector = if r.face_crop && !r.faces.whole_image() {
        find_detector(&r.faces)
    } else {
        None
    };
    let locate = detector.as_ref().map(|d| {
        Box::new(move |img: &image::RgbImage| {
            d.detect(img)
                .ok()
                .and_then(|f| persona_faces::largest(&f))
                .map(|f| f.bbox)
        }) as Box<FaceLocator>
    });
    load_folder(&r.images, resolution, locate.as_deref(), &sd.device)
}

fn find_detector(search: &ModelSearch) -> Option<Box<dyn persona_faces::Detector>> {
    match search.load_detector() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("no face detector found, photos are centre-cropped ({e})");
            None
        }
    }
}

/// The method with its options, and the hyper-parameters its identity file records.
pub fn build<'a>(
    sd: &StableDiffusion,
    r: &Recipe,
    resolution: u32,
    seed: u64,
) -> Result<Built<'a>> {
    let o = &r.options;
    let latent_side = resolution as usize / sd.vae_scale();
    let layers = LayerSelect::parse(&o.attn_layers, latent_side)?;
    let attn_hyper = |weight: f64| serde_json::json!({"attn_loss": weight, "class_word": o.class_word, "attn_layers": o.attn_layers});
    let init = InitOptions {
        num_tokens: o.num_tokens.unwrap_or(r.method.default_num_tokens()),
        init_words: o.init_words.clone(),
        names: o.names.clone(),
    };
    let kind = match r.method {
        MethodName::Ti => MethodKind::Ti,
        MethodName::CrossInit => MethodKind::CrossInit,
        MethodName::Idea => return build_idea(sd, r, init, seed),
        MethodName::Sefi => {
            let weight = o.attn_loss.or(r.method.default_attn_loss()).unwrap_or(0.0);
            let so = SefiOptions {
                stages: o.stages,
                num_tokens: o.num_tokens.unwrap_or(r.method.default_num_tokens()),
                init_word: o.init_words.clone(),
                class_word: o.class_word.clone(),
                attn_weight: weight,
                layers,
                parameterisation: match o.sefi_param {
                    SefiParam::Direct => Parameterisation::Direct,
                    SefiParam::Generator => Parameterisation::Generator,
                },
                seed,
            };
            let hyper = serde_json::json!({"stages": o.stages, "num_tokens": so.num_tokens, "init_words": o.init_words,
                "parameterisation": o.sefi_param, "attention": attn_hyper(weight)});
            return Ok(Built {
                method: Box::new(SefiMethod::new(sd, &r.token, &so)?),
                hyper,
                face_model: None,
            });
        }
    };
    let reg_weight = o.reg_weight.unwrap_or(r.method.default_reg_weight());
    let method = TokenMethod::new(sd, kind, &r.token, &init, reg_weight)?;
    let mut hyper = serde_json::json!({"reg_weight": method.reg_weight, "num_tokens": init.num_tokens, "init_words": o.init_words});
    let attn_loss = o.attn_loss.or(r.method.default_attn_loss());
    let method: Box<dyn Method> = match attn_loss.filter(|&w| w != 0.0) {
        Some(weight) => {
            hyper["attention"] = attn_hyper(weight);
            let names = method.names.clone();
            let attention = SubjectAttention::new(sd, &o.class_word, weight, layers)?;
            Box::new(WithAttentionLoss::new(method, names, attention)?)
        }
        None => Box::new(method),
    };
    Ok(Built {
        method,
        hyper,
        face_model: None,
    })
}

/// ID-EA: the face embedding of the photos, then the method around it.
fn build_idea<'a>(
    sd: &StableDiffusion,
    r: &Recipe,
    init: InitOptions,
    seed: u64,
) -> Result<Built<'a>> {
    let o = &r.options;
    let analyzer = FaceAnalyzer::from_search(&r.faces).map_err(|e| {
        Error::Msg(format!(
            "ID-EA needs a face detector and a face recogniser: {e}"
        ))
    })?;
    let file = r.faces.find_recognizer()?.path;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut face_model = format!("{:?} ({name})", analyzer.recognizer().kind()).to_lowercase();
    if r.faces.whole_image() {
        // `--detector none`: each photo's embedding is of the whole photo (its centred square).
        face_model.push_str(", whole image");
    }
    let embed = |img: &image::RgbImage| {
        analyzer
            .embed_largest(img)
            .map(|f| f.map(|(_, v)| v))
            .map_err(Error::from)
    };
    let (face, used) = identity_embedding(&r.images, &embed, &sd.device)?;
    tracing::info!("face embedding: {used} photo(s), {face_model}");
    let config = IdeaConfig {
        heads: o.idea_heads,
        reg: o.reg,
        reg_weight: o.reg_weight.unwrap_or(r.method.default_reg_weight()),
        kv_rank: o.kv_rank,
        ..IdeaConfig::new(init, seed)
    };
    let method = Idea::new(sd, &r.token, config, face, face_model.clone())?;
    let mut hyper = method.hyper();
    hyper["face_photos"] = used.into();
    Ok(Built {
        method: Box::new(method),
        hyper,
        face_model: Some(face_model),
    })
}
