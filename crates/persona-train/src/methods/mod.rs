//! What a method learns and how it shapes the condition ([`Method`]). Textual Inversion and Cross
//! Initialization learn only the pseudo-token rows; they differ in initialisation and regularisation.

pub mod anchor;
pub mod idea;
pub mod sefi;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Tensor, Var};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::{AttentionControl, Condition};
use persona_diffusion::pipeline::{LearnedTokens, StableDiffusion};

use crate::recipe::MethodName;
use crate::{Error, Result};
use persona_identity::SDXL_CLIP_G;

/// A personalization method as the training loop sees it.
pub trait Method {
    /// `ti`, `cross-init`, …
    fn name(&self) -> &'static str;
    /// The pseudo-tokens joined by spaces, for captions.
    fn phrase(&self) -> String;
    /// The trainable tensors (the optimizer updates exactly these), with stable names for checkpoints.
    fn vars(&self) -> Vec<(String, Var)>;
    /// The UNet condition for a batch of captions, sample `i` noised to `timesteps[i]`, and, for SDXL, the
    /// pooled text embeddings the UNet's added conditioning takes (`None` for SD 1.x/2.x).
    fn encode(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        timesteps: &[usize],
    ) -> Result<(Condition, Option<Tensor>)>;
    /// [`Method::encode`]'s condition alone.
    fn condition(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        timesteps: &[usize],
    ) -> Result<Condition> {
        Ok(self.encode(sd, captions, timesteps)?.0)
    }
    /// A cross-attention plug-in for the UNet forward of a training step (attention losses).
    fn control(&self) -> Option<&dyn AttentionControl> {
        None
    }
    /// Terms added to the diffusion loss, read after the UNet forward (regularisers, attention losses).
    fn extra_loss(&self) -> Result<Option<Tensor>>;
    /// Non-trainable tensors worth keeping (anchors), for checkpoints and identity files.
    fn extra_tensors(&self) -> BTreeMap<String, Tensor> {
        BTreeMap::new()
    }
    /// Replaces one of [`Method::extra_tensors`]: a device check starts both devices from the same anchors,
    /// since Cross Init's regulariser `‖E − init + 1e-6‖` turns rounding in `init` into a new gradient
    /// direction at `E = init`.
    fn set_extra_tensor(&mut self, name: &str, _value: &Tensor) -> Result<()> {
        Err(Error::Msg(format!("{} has no tensor {name}", self.name())))
    }
    /// What the identity file stores: pseudo-token names, their embeddings `[n, d]`, and method modules; an
    /// error when a stored tensor cannot be computed (never a panic, never a part silently left out).
    fn identity_parts(&self) -> Result<IdentityParts>;
}

/// Pseudo-token names, their embeddings `[n, d]` and the method's modules, as an identity file stores them.
pub type IdentityParts = (Vec<String>, Tensor, BTreeMap<String, Tensor>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// Textual Inversion: rows from an init word's input embedding, diffusion loss only.
    Ti,
    /// Cross Initialization: rows from the celebrity-name anchor, L2 pull towards it.
    CrossInit,
}

impl std::str::FromStr for MethodKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [Self::Ti, Self::CrossInit]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::Msg(format!("unknown method {s:?}; expected ti or cross-init")))
    }
}

impl MethodKind {
    /// The method's one name ([`MethodName::name`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ti => MethodName::Ti,
            Self::CrossInit => MethodName::CrossInit,
        }
        .name()
    }
}

/// How the rows start.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub num_tokens: usize,
    /// TI: the init word(s) (default "person"); Cross Init: words replacing the celebrity anchor.
    pub init_words: Option<String>,
    /// Cross Init names file (default: the bundled list).
    pub names: Option<PathBuf>,
}

/// A token-learning method: the learned rows and, for Cross Init, the anchor and its regulariser.
///
/// On SDXL every pseudo-token has a row in each token table: `rows` (`text_encoder`, CLIP-L) and `rows_2`
/// (`text_encoder_2`, OpenCLIP bigG), each initialised and anchored in its own table (`init`, `init_2`); the
/// Cross Init regulariser is the sum of both tables' terms.
pub struct TokenMethod {
    pub kind: MethodKind,
    pub names: Vec<String>,
    pub rows: Var,
    /// The regularisation target (Cross Init) — also what the rows start from.
    pub init: Tensor,
    /// SDXL: the rows of the second token table and their start / target.
    pub rows_2: Option<Var>,
    pub init_2: Option<Tensor>,
    pub reg_weight: f64,
}

impl TokenMethod {
    /// Pseudo-token names for `token`: `<tok>_v0 … <tok>_v{n-1}`; an error if any is in the vocabulary.
    pub fn token_names(sd: &StableDiffusion, token: &str, n: usize) -> Result<Vec<String>> {
        if n == 0 {
            return Err(Error::Msg("--num-tokens must be at least 1".into()));
        }
        if token.trim().is_empty() || token.contains(char::is_whitespace) {
            return Err(Error::Msg(format!(
                "token {token:?} must be one word without spaces"
            )));
        }
        let names: Vec<String> = (0..n).map(|i| format!("{token}_v{i}")).collect();
        for name in std::iter::once(token).chain(names.iter().map(String::as_str)) {
            if sd.tokenizer.token_id(name).is_some()
                || sd.tokenizer.token_id(&format!("{name}</w>")).is_some()
            {
                return Err(Error::Msg(format!(
                    "token {name} is already in the vocabulary; choose another --token"
                )));
            }
        }
        Ok(names)
    }

    pub fn new(
        sd: &StableDiffusion,
        kind: MethodKind,
        token: &str,
        init: &InitOptions,
        reg_weight: f64,
    ) -> Result<Self> {
        let names = Self::token_names(sd, token, init.num_tokens)?;
        let n = init.num_tokens;
        let names_list = match (kind, &init.init_words) {
            (MethodKind::CrossInit, None) => Some(anchor::read_names(init.names.as_deref())?),
            _ => None,
        };
        let start = |t: anchor::Table| -> Result<Tensor> {
            match (kind, &init.init_words) {
                (MethodKind::Ti, words) => {
                    anchor::word_rows_in(t, words.as_deref().unwrap_or("person"), n)
                }
                (MethodKind::CrossInit, Some(words)) => anchor::words_anchor_in(t, words, n),
                (MethodKind::CrossInit, None) => {
                    anchor::cross_init_anchor_in(t, names_list.as_deref().unwrap_or(&[]), n)
                }
            }
        };
        let first = start(anchor::Table::first(sd))?;
        let second = anchor::Table::second(sd).map(start).transpose()?;
        let reg_weight = if kind == MethodKind::CrossInit {
            reg_weight
        } else {
            0.0
        };
        Ok(Self {
            kind,
            names,
            rows: Var::from_tensor(&first)?,
            init: first.detach(),
            rows_2: second.as_ref().map(Var::from_tensor).transpose()?,
            init_2: second.map(|t| t.detach()),
            reg_weight,
        })
    }

    pub fn tokens(&self) -> LearnedTokens {
        LearnedTokens {
            names: self.names.clone(),
            rows: self.rows.as_tensor().clone(),
            rows_2: self.rows_2.as_ref().map(|v| v.as_tensor().clone()),
        }
    }

    /// `reg_weight · mean_i ‖E_i − init_i + 1e-6‖₂` (PyTorch's `pairwise_distance`), or None.
    pub fn regularizer(&self) -> Result<Option<Tensor>> {
        if self.reg_weight == 0.0 {
            return Ok(None);
        }
        // (E − init) first, then + 1e-6, as PyTorch does: at E = init the difference is exactly 0 and the
        // gradient direction is the eps vector's, which adding eps to init first would blur in f32.
        let term = |rows: &Tensor, init: &Tensor| -> Result<Tensor> {
            let diff = (persona_diffusion::nn::grad::add(rows, &init.neg()?)? + 1e-6)?;
            let norms = diff.sqr()?.sum(1)?.sqrt()?;
            Ok((norms.mean_all()? * self.reg_weight)?)
        };
        let mut reg = term(self.rows.as_tensor(), &self.init)?;
        if let (Some(rows), Some(init)) = (&self.rows_2, &self.init_2) {
            reg = (reg + term(rows.as_tensor(), init)?)?;
        }
        Ok(Some(reg))
    }
}

impl Method for TokenMethod {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn phrase(&self) -> String {
        self.names.join(" ")
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut vars = vec![("embeddings".into(), self.rows.clone())];
        if let Some(rows) = &self.rows_2 {
            vars.push((SDXL_CLIP_G.into(), rows.clone()));
        }
        vars
    }

    fn encode(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        _timesteps: &[usize],
    ) -> Result<(Condition, Option<Tensor>)> {
        let e = sd.encode_text_with_tokens(captions, &[self.tokens()], Output::Last)?;
        Ok((Condition::new(e.embeds), e.pooled))
    }

    fn extra_loss(&self) -> Result<Option<Tensor>> {
        self.regularizer()
    }

    fn extra_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut t = BTreeMap::from([("anchor.init".to_string(), self.init.clone())]);
        if let Some(init) = &self.init_2 {
            t.insert("anchor.init_2".to_string(), init.clone());
        }
        t
    }

    fn set_extra_tensor(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let device = self.init.device().clone();
        match (name, &mut self.init_2) {
            ("anchor.init", _) => self.init = value.to_device(&device)?,
            ("anchor.init_2", Some(init)) => *init = value.to_device(&device)?,
            _ => return Err(Error::Msg(format!("{} has no tensor {name}", self.name()))),
        }
        Ok(())
    }

    fn identity_parts(&self) -> Result<IdentityParts> {
        let mut modules = self.extra_tensors();
        if let Some(rows) = &self.rows_2 {
            modules.insert(SDXL_CLIP_G.to_string(), rows.as_tensor().detach());
        }
        Ok((self.names.clone(), self.rows.as_tensor().detach(), modules))
    }
}
