//! SeFi-IDE (reconstructed; no public code exists — `docs/sefi.md` lists every choice): per-stage key/value
//! pseudo-tokens and the subject-wise attention loss.
//!
//! The timesteps are cut into S stages (`stage = ⌊t·S/T⌋`); each stage has a key and a value embedding per
//! pseudo-token. A caption is encoded twice by the frozen text encoder (keys in the placeholder slots, then
//! values) and every cross-attention layer takes its keys from the first encoding and its values from the
//! second ([`LearnedTokens::staged`], shared with generation). A training sample uses the stage of its own timestep.

pub mod attention_loss;
pub mod generator;

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::{AttentionControl, Condition};
use persona_diffusion::pipeline::{stage_of, LearnedTokens, StableDiffusion};

pub use attention_loss::{LayerSelect, SubjectAttention};
pub use generator::Generator;

use super::{anchor, Method, TokenMethod};
use crate::identity::Identity;
use crate::{Error, Result};

/// Identity-file tensor of the per-stage key embeddings `[S, n, d]`.
pub const KEYS: &str = "stages.keys";
/// Identity-file tensor of the per-stage value embeddings `[S, n, d]`.
pub const VALUES: &str = "stages.values";

/// How the 2·S·n vectors are parameterised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parameterisation {
    /// Each vector is trained directly, all starting at the init word's input embedding (default).
    Direct,
    /// ProSpect-style: a small transformer block maps the init embedding to the vectors ([`Generator`]).
    Generator,
}

#[derive(Clone, Debug)]
pub struct SefiOptions {
    pub stages: usize,
    pub num_tokens: usize,
    /// The word the vectors start from (default: the class word).
    pub init_word: Option<String>,
    pub class_word: String,
    /// λ of the attention loss (0 disables it).
    pub attn_weight: f64,
    pub layers: LayerSelect,
    pub parameterisation: Parameterisation,
    /// Seed of the generator's random initialisation.
    pub seed: u64,
}

enum Params {
    Direct { keys: Var, values: Var },
    Generator(Generator),
}

pub struct SefiMethod {
    names: Vec<String>,
    stages: usize,
    params: Params,
    train_steps: usize,
    attention: Option<SubjectAttention>,
}

impl SefiMethod {
    pub fn new(sd: &StableDiffusion, token: &str, o: &SefiOptions) -> Result<Self> {
        if o.stages == 0 {
            return Err(Error::Msg("--stages must be at least 1".into()));
        }
        let names = TokenMethod::token_names(sd, token, o.num_tokens)?;
        let init = anchor::word_rows(
            sd,
            o.init_word.as_deref().unwrap_or(&o.class_word),
            o.num_tokens,
        )?;
        let params = match o.parameterisation {
            Parameterisation::Direct => {
                let all = init.unsqueeze(0)?.repeat((o.stages, 1, 1))?;
                Params::Direct {
                    keys: Var::from_tensor(&all)?,
                    values: Var::from_tensor(&all)?,
                }
            }
            Parameterisation::Generator => {
                Params::Generator(Generator::new(&init, o.stages, o.seed)?)
            }
        };
        let attention = (o.attn_weight != 0.0)
            .then(|| SubjectAttention::new(sd, &o.class_word, o.attn_weight, o.layers.clone()))
            .transpose()?;
        let train_steps = sd.scheduler_config.num_train_timesteps.unwrap_or(1000);
        Ok(Self {
            names,
            stages: o.stages,
            params,
            train_steps,
            attention,
        })
    }

    /// The current per-stage key and value embeddings, `[S, n, d]` each (graph kept).
    pub fn keys_values(&self) -> Result<(Tensor, Tensor)> {
        match &self.params {
            Params::Direct { keys, values } => {
                Ok((keys.as_tensor().clone(), values.as_tensor().clone()))
            }
            Params::Generator(g) => g.forward(),
        }
    }

    /// The pseudo-tokens as staged tokens (graph kept).
    pub fn staged(&self) -> Result<LearnedTokens> {
        let (keys, values) = self.keys_values()?;
        LearnedTokens::staged(self.names.clone(), &keys, &values)
    }

    pub fn attention(&self) -> Option<&SubjectAttention> {
        self.attention.as_ref()
    }
}

impl Method for SefiMethod {
    fn name(&self) -> &'static str {
        "sefi"
    }

    fn phrase(&self) -> String {
        self.names.join(" ")
    }

    fn vars(&self) -> Vec<(String, Var)> {
        match &self.params {
            Params::Direct { keys, values } => {
                vec![(KEYS.into(), keys.clone()), (VALUES.into(), values.clone())]
            }
            Params::Generator(g) => g.vars(),
        }
    }

    /// Samples are grouped by stage; each group is encoded with its stage's keys and values, and the rows are
    /// put back in batch order.
    fn condition(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        timesteps: &[usize],
    ) -> Result<Condition> {
        if captions.len() != timesteps.len() {
            return Err(Error::Msg(format!(
                "{} captions for {} timesteps",
                captions.len(),
                timesteps.len()
            )));
        }
        let staged = self.staged()?;
        let stage = |t: usize| stage_of(t as f64, self.stages, self.train_steps);
        let mut order = Vec::new();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut stages: Vec<usize> = timesteps.iter().map(|&t| stage(t)).collect();
        stages.sort_unstable();
        stages.dedup();
        for s in stages {
            let group: Vec<usize> = (0..captions.len())
                .filter(|&i| stage(timesteps[i]) == s)
                .collect();
            let prompts: Vec<&str> = group.iter().map(|&i| captions[i]).collect();
            keys.push(sd.encode_with_tokens(
                &prompts,
                &[staged.at_stage(s, false)?],
                Output::Last,
            )?);
            values.push(sd.encode_with_tokens(
                &prompts,
                &[staged.at_stage(s, true)?],
                Output::Last,
            )?);
            order.extend(group);
        }
        if let Some(a) = &self.attention {
            a.prepare(sd, captions, &self.names)?;
        }
        // Row r of the concatenation is sample order[r]; sample i is row position(order, i).
        let back: Vec<u32> = (0..captions.len())
            .map(|i| order.iter().position(|&o| o == i).unwrap_or(0) as u32)
            .collect();
        let back = Tensor::new(back, &sd.device)?;
        let regroup = |parts: Vec<Tensor>| -> Result<Tensor> {
            let all = if parts.len() == 1 {
                parts.into_iter().next().expect("one part")
            } else {
                Tensor::cat(&parts, 0)?
            };
            Ok(if order.windows(2).all(|w| w[0] < w[1]) {
                all
            } else {
                all.index_select(&back, 0)?
            })
        };
        Ok(Condition::split(regroup(keys)?, regroup(values)?))
    }

    fn control(&self) -> Option<&dyn AttentionControl> {
        self.attention.as_ref().map(|a| a as &dyn AttentionControl)
    }

    fn extra_loss(&self) -> Result<Option<Tensor>> {
        self.attention
            .as_ref()
            .map(SubjectAttention::loss)
            .transpose()
    }

    /// The identity stores the per-stage tensors (`stages.keys`, `stages.values`, detached generator output
    /// for the generator option) and, as its `[n, d]` embeddings, their mean over stages and K/V: the best
    /// single vector for tools that know no stages (exports).
    fn identity_parts(&self) -> (Vec<String>, Tensor, BTreeMap<String, Tensor>) {
        let (keys, values) = self
            .keys_values()
            .expect("the generator's shapes are fixed at construction");
        let (keys, values) = (keys.detach(), values.detach());
        let mean = Tensor::cat(&[&keys, &values], 0)
            .and_then(|kv| kv.mean(0))
            .expect("[2S, n, d] tensors");
        (
            self.names.clone(),
            mean,
            BTreeMap::from([(KEYS.to_string(), keys), (VALUES.to_string(), values)]),
        )
    }
}

/// Any method with the subject-wise attention loss added (`--attn-loss λ` for ti / cross-init).
pub struct WithAttentionLoss<M> {
    pub inner: M,
    pub attention: SubjectAttention,
    names: Vec<String>,
}

impl<M: Method> WithAttentionLoss<M> {
    /// `names` are the inner method's pseudo-tokens (whose maps the loss pulls to the class word's).
    pub fn new(inner: M, names: Vec<String>, attention: SubjectAttention) -> Result<Self> {
        if inner.control().is_some() {
            return Err(Error::Msg(format!(
                "method {} already steers cross-attention; the attention loss cannot be added",
                inner.name()
            )));
        }
        Ok(Self {
            inner,
            attention,
            names,
        })
    }
}

impl<M: Method> Method for WithAttentionLoss<M> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn phrase(&self) -> String {
        self.inner.phrase()
    }
    fn vars(&self) -> Vec<(String, Var)> {
        self.inner.vars()
    }
    fn condition(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        timesteps: &[usize],
    ) -> Result<Condition> {
        self.attention.prepare(sd, captions, &self.names)?;
        self.inner.condition(sd, captions, timesteps)
    }
    fn control(&self) -> Option<&dyn AttentionControl> {
        Some(&self.attention)
    }
    fn extra_loss(&self) -> Result<Option<Tensor>> {
        let attn = self.attention.loss()?;
        Ok(Some(match self.inner.extra_loss()? {
            Some(reg) => (reg + attn)?,
            None => attn,
        }))
    }
    fn extra_tensors(&self) -> BTreeMap<String, Tensor> {
        self.inner.extra_tensors()
    }
    fn identity_parts(&self) -> (Vec<String>, Tensor, BTreeMap<String, Tensor>) {
        self.inner.identity_parts()
    }
}

/// The per-stage tokens of a SeFi identity (`None` for a plain token identity); an error naming the identity
/// when its stage tensors are inconsistent.
pub fn staged_tokens(identity: &Identity) -> Result<Option<LearnedTokens>> {
    match (identity.modules.get(KEYS), identity.modules.get(VALUES)) {
        (None, None) => Ok(None),
        (Some(k), Some(v)) => LearnedTokens::staged(identity.tokens.clone(), k, v)
            .map(Some)
            .map_err(|e| Error::Msg(format!("identity {}: {e}", identity.token))),
        _ => Err(Error::Msg(format!(
            "identity {} has only one of {KEYS} / {VALUES}",
            identity.token
        ))),
    }
}
