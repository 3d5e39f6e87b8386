//! ID-EA (shared/spec/methods.md, "ID-EA"): Cross Initialization's pseudo-tokens trained together with an
//! ID-Enhancer (face embedding × textual anchor → identity-enhanced embedding) and an ID-Adapter (gated
//! attention that adapts the text condition every cross-attention layer reads), optionally with low-rank
//! deltas on the cross-attention keys and values. As the paper describes it, not as the released code runs:
//! the Enhancer is trained, the face embedding is the person's (aligned, averaged), and the adapter is saved
//! and applied at inference (see `docs/idea.md`).
//!
//! On SDXL the pseudo-tokens have a row in each token table (Cross Init's anchor in each), the anchor the
//! Enhancer reads is the two tables' anchors side by side (`[n, d1 + d2]`, the width of the condition), and
//! the Adapter adapts the 2048-wide condition the UNet's cross-attention reads. The pooled embedding (the
//! added conditioning's text part) is not adapted: the Adapter is defined on the token sequence the
//! cross-attention reads, and the identity already reaches the pooled embedding through the learned
//! `text_encoder_2` rows (it is pooled at a pseudo-token's position, as diffusers pools after
//! `load_textual_inversion`). See `docs/sdxl.md`.

pub mod enhancer;
pub mod face;
pub mod reg;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::{AttentionControl, Condition};
use persona_diffusion::pipeline::StableDiffusion;

use self::enhancer::Enhancer;
use super::{IdentityParts, InitOptions, Method, MethodKind, TokenMethod};
use crate::{Error, Result};
use persona_identity::adapter::{self, Adapter};
use persona_identity::kv::{self, KvDeltas};
use persona_identity::layers::{Named, Source};

pub use persona_identity::FUSED;
/// The identity-file name of the person's mean face embedding.
pub const FACE_EMBEDDING: &str = "face.embedding";

/// Which pull keeps the pseudo-tokens near the anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Regularizer {
    /// Cross Init's `w · mean_i ‖E_i − init_i + 1e-6‖₂` (the default).
    L2,
    /// The released code's Mahalanobis form (degenerate; see [`reg`]).
    Mahalanobis,
}

impl std::str::FromStr for Regularizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l2" => Ok(Self::L2),
            "mahalanobis" => Ok(Self::Mahalanobis),
            other => Err(Error::Msg(format!(
                "unknown regulariser {other:?}; expected l2 or mahalanobis"
            ))),
        }
    }
}

/// ID-EA's settings (defaults: the official README's).
#[derive(Clone, Debug)]
pub struct IdeaConfig {
    pub init: InitOptions,
    /// Attention heads of the Enhancer's and the Adapter's MHA (8; must divide the text width).
    pub heads: usize,
    /// The adapter's constant gate scale β.
    pub beta: f64,
    pub reg: Regularizer,
    pub reg_weight: f64,
    /// Rank of the cross-attention key/value deltas (`--train-cross-attn-kv`); `None`: not trained.
    pub kv_rank: Option<usize>,
    /// Seeds the initialisation of the new modules.
    pub seed: u64,
}

impl IdeaConfig {
    pub fn new(init: InitOptions, seed: u64) -> Self {
        Self {
            init,
            heads: 8,
            beta: adapter::BETA,
            reg: Regularizer::L2,
            reg_weight: 8e-4,
            kv_rank: None,
            seed,
        }
    }
}

/// ID-EA as the training loop drives it.
pub struct Idea {
    tokens: TokenMethod,
    /// The person's mean face embedding `[f]`.
    face: Tensor,
    face_model: String,
    enhancer: Enhancer,
    adapter: Adapter,
    kv: Option<KvDeltas>,
    /// `C⁺` of the Mahalanobis regulariser, per token table.
    precision: Option<(Tensor, Option<Tensor>)>,
    module_vars: Named,
    config: IdeaConfig,
}

impl Idea {
    /// Tokens from the Cross Init anchor, new modules from `config.seed`; `face` is the identity's face
    /// embedding and `face_model` names the recogniser that made it (recorded in the identity file).
    pub fn new(
        sd: &StableDiffusion,
        token: &str,
        config: IdeaConfig,
        face: Tensor,
        face_model: impl Into<String>,
    ) -> Result<Self> {
        let l2_weight = if config.reg == Regularizer::L2 {
            config.reg_weight
        } else {
            0.0
        };
        let tokens = TokenMethod::new(sd, MethodKind::CrossInit, token, &config.init, l2_weight)?;
        Self::with_tokens(sd, tokens, config, face, face_model)
    }

    /// [`Idea::new`] around given tokens and anchor (`tokens.reg_weight` is the L2 weight; parity tests use
    /// the reference's anchor, since the L2 term's gradient direction at `E = init` hangs on the last bits).
    pub fn with_tokens(
        sd: &StableDiffusion,
        tokens: TokenMethod,
        config: IdeaConfig,
        face: Tensor,
        face_model: impl Into<String>,
    ) -> Result<Self> {
        let d = anchor(&tokens)?.dim(1)?;
        let face = face.to_dtype(DType::F32)?.to_device(&sd.device)?;
        if face.rank() != 1 || face.dim(0)? == 0 {
            return Err(Error::Msg(format!(
                "the face embedding must be a vector, got shape {:?}",
                face.dims()
            )));
        }
        let mut module_vars = Named::new();
        let mut src = Source::Init {
            seed: config.seed,
            dtype: DType::F32,
            device: &sd.device,
            vars: &mut module_vars,
        };
        let enhancer = Enhancer::new(&mut src, face.dim(0)?, d, config.heads)?;
        let adapter = Adapter::new(&mut src, d, config.heads, config.beta)?;
        let kv = match config.kv_rank {
            Some(0) => {
                return Err(Error::Msg(
                    "the key/value delta rank must be at least 1".into(),
                ))
            }
            Some(rank) => Some(KvDeltas::new(
                &mut src,
                &kv::cross_attention_layers(sd)?,
                rank,
            )?),
            None => None,
        };
        let precision = match config.reg {
            Regularizer::Mahalanobis => Some((
                reg::precision(&tokens.init)?,
                tokens.init_2.as_ref().map(reg::precision).transpose()?,
            )),
            Regularizer::L2 => None,
        };
        Ok(Self {
            tokens,
            face,
            face_model: face_model.into(),
            enhancer,
            adapter,
            kv,
            precision,
            module_vars,
            config,
        })
    }

    /// The identity-enhanced embedding `[n, 2d]` of the current Enhancer.
    pub fn fused(&self) -> Result<Tensor> {
        self.enhancer.forward(&self.face, &anchor(&self.tokens)?)
    }

    /// The adapter's gate γ.
    pub fn gamma(&self) -> Result<f32> {
        Ok(self.adapter.gamma.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
    }

    /// The recogniser that made the face embedding.
    pub fn face_model(&self) -> &str {
        &self.face_model
    }

    /// What inference needs besides the tensors (heads, β), and the settings, for the identity metadata.
    pub fn hyper(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({"num_tokens": c.init.num_tokens, "init_words": c.init.init_words, "heads": c.heads,
            "beta": c.beta, "reg": c.reg, "reg_weight": c.reg_weight, "kv_rank": c.kv_rank, "face_model": self.face_model})
    }
}

/// The textual anchor the Enhancer reads: Cross Init's anchor `[n, d]`, on SDXL both tables' side by side.
fn anchor(tokens: &TokenMethod) -> Result<Tensor> {
    Ok(match &tokens.init_2 {
        Some(init_2) => Tensor::cat(&[&tokens.init, init_2], 1)?,
        None => tokens.init.clone(),
    })
}

impl Method for Idea {
    fn name(&self) -> &'static str {
        crate::recipe::MethodName::Idea.name()
    }

    fn phrase(&self) -> String {
        self.tokens.phrase()
    }

    fn vars(&self) -> Vec<(String, candle_core::Var)> {
        let mut vars = self.tokens.vars();
        vars.extend(self.module_vars.iter().cloned());
        vars
    }

    fn encode(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        _timesteps: &[usize],
    ) -> Result<(Condition, Option<Tensor>)> {
        let y = sd.encode_text_with_tokens(captions, &[self.tokens.tokens()], Output::Last)?;
        let adapted = self.adapter.forward(&y.embeds, &self.fused()?)?;
        Ok((Condition::new(adapted), y.pooled))
    }

    fn control(&self) -> Option<&dyn AttentionControl> {
        self.kv.as_ref().map(|k| k as &dyn AttentionControl)
    }

    fn extra_loss(&self) -> Result<Option<Tensor>> {
        let Some((p, p_2)) = &self.precision else {
            return self.tokens.regularizer();
        };
        let w = self.config.reg_weight;
        let mut reg = reg::mahalanobis(self.tokens.rows.as_tensor(), &self.tokens.init, p, w)?;
        if let (Some(rows), Some(init), Some(p)) = (&self.tokens.rows_2, &self.tokens.init_2, p_2) {
            reg = (reg + reg::mahalanobis(rows.as_tensor(), init, p, w)?)?;
        }
        Ok(Some(reg))
    }

    fn extra_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = self.tokens.extra_tensors();
        out.insert(FACE_EMBEDDING.into(), self.face.clone());
        out
    }

    fn set_extra_tensor(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if name == FACE_EMBEDDING {
            self.face = value.to_device(self.face.device())?;
            return Ok(());
        }
        self.tokens.set_extra_tensor(name, value)
    }

    fn identity_parts(&self) -> Result<IdentityParts> {
        // The tokens' parts: names, rows, anchors and (SDXL) the second table's rows.
        let (names, rows, mut modules) = self.tokens.identity_parts()?;
        modules.insert(FACE_EMBEDDING.into(), self.face.clone());
        for (name, var) in &self.module_vars {
            modules.insert(name.clone(), var.as_tensor().detach());
        }
        // The fused vector is a function of saved tensors, but storing it lets inference skip the Enhancer.
        modules.insert(FUSED.into(), self.fused()?.detach());
        Ok((names, rows, modules))
    }
}
