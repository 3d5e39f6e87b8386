//! SeFi-IDE (reconstructed; no public code exists — `docs/sefi.md` lists every choice): per-stage key/value
//! pseudo-tokens and the subject-wise attention loss.
//!
//! The timesteps are cut into S stages (`stage = ⌊t·S/T⌋`); each stage has a key and a value embedding per
//! pseudo-token. A caption is encoded twice by the frozen text encoder (keys in the placeholder slots, then
//! values) and every cross-attention layer takes its keys from the first encoding and its values from the
//! second ([`LearnedTokens::staged`], shared with generation). A training sample uses the stage of its own timestep.
//!
//! On SDXL every vector has a part in each token table: the method learns `[S, n, d1 + d2]` tensors (the
//! two tables' rows side by side, which is also the width of the condition they produce) and splits them at
//! `d1` for the two encoders; identity files store the parts separately (`stages.keys` / `stages.values` and
//! `stages.keys_2` / `stages.values_2`). The pooled embeddings come from the value encoding (see
//! `persona_diffusion::pipeline`'s staged tokens).

pub mod attention_loss;
pub mod generator;

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::{AttentionControl, Condition};
use persona_diffusion::pipeline::{stage_of, LearnedTokens, StableDiffusion};

pub use attention_loss::{LayerSelect, SubjectAttention};
pub use generator::Generator;

use super::{anchor, IdentityParts, Method, TokenMethod};
use crate::{Error, Result};
use persona_identity::SDXL_CLIP_G;

use persona_identity::stages::{KEYS, KEYS_2, VALUES, VALUES_2};

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
    /// SDXL: the width of the first table's part (`d1`); the rest of each vector is the second table's.
    split: Option<usize>,
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
        let word = o.init_word.as_deref().unwrap_or(&o.class_word);
        let first = anchor::word_rows_in(anchor::Table::first(sd), word, o.num_tokens)?;
        let second = anchor::Table::second(sd)
            .map(|t| anchor::word_rows_in(t, word, o.num_tokens))
            .transpose()?;
        let split = second.as_ref().map(|_| first.dim(1)).transpose()?;
        let init = match &second {
            Some(second) => Tensor::cat(&[&first, second], 1)?,
            None => first,
        };
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
            split,
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
        Ok(match self.split_tables(&keys, &values)? {
            (first, Some(second)) => LearnedTokens::staged_sdxl(
                self.names.clone(),
                (&first.0, &first.1),
                (&second.0, &second.1),
            )?,
            ((k, v), None) => LearnedTokens::staged(self.names.clone(), &k, &v)?,
        })
    }

    /// Keys and values `[S, n, d1 + d2]` as the first table's part and (SDXL) the second's.
    #[allow(clippy::type_complexity)]
    fn split_tables(
        &self,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<((Tensor, Tensor), Option<(Tensor, Tensor)>)> {
        let Some(d1) = self.split else {
            return Ok(((keys.clone(), values.clone()), None));
        };
        let part = |t: &Tensor, first: bool| -> Result<Tensor> {
            let d = t.dim(2)?;
            Ok(if first {
                t.narrow(2, 0, d1)?
            } else {
                t.narrow(2, d1, d - d1)?
            })
        };
        Ok((
            (part(keys, true)?, part(values, true)?),
            Some((part(keys, false)?, part(values, false)?)),
        ))
    }

    pub fn attention(&self) -> Option<&SubjectAttention> {
        self.attention.as_ref()
    }
}

impl Method for SefiMethod {
    fn name(&self) -> &'static str {
        crate::recipe::MethodName::Sefi.name()
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

    /// Samples are grouped by stage; each group is encoded with its stage's keys and values (SDXL: pooled
    /// embeddings from the values), and the rows are put back in batch order.
    fn encode(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        timesteps: &[usize],
    ) -> Result<(Condition, Option<Tensor>)> {
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
        let (mut keys, mut values, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
        let mut stages: Vec<usize> = timesteps.iter().map(|&t| stage(t)).collect();
        stages.sort_unstable();
        stages.dedup();
        for s in stages {
            let group: Vec<usize> = (0..captions.len())
                .filter(|&i| stage(timesteps[i]) == s)
                .collect();
            let prompts: Vec<&str> = group.iter().map(|&i| captions[i]).collect();
            let encode = |value: bool| {
                sd.encode_text_with_tokens(&prompts, &[staged.at_stage(s, value)?], Output::Last)
            };
            keys.push(encode(false)?.embeds);
            let v = encode(true)?;
            values.push(v.embeds);
            pooled.extend(v.pooled);
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
        let pooled = (!pooled.is_empty()).then(|| regroup(pooled)).transpose()?;
        Ok((Condition::split(regroup(keys)?, regroup(values)?), pooled))
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

    /// The identity stores the per-stage tensors (`stages.keys`, `stages.values`, on SDXL also `stages.keys_2`,
    /// `stages.values_2`; detached generator output for the generator option) and, as its `[n, d]` embeddings
    /// (SDXL: and `sdxl.clip_g`), their mean over stages and K/V: the best single vector for tools that know no
    /// stages (exports).
    fn identity_parts(&self) -> Result<IdentityParts> {
        let (keys, values) = self.keys_values()?;
        let (first, second) = self.split_tables(&keys.detach(), &values.detach())?;
        let mean =
            |(k, v): &(Tensor, Tensor)| -> Result<Tensor> { Ok(Tensor::cat(&[k, v], 0)?.mean(0)?) };
        let mut modules = BTreeMap::from([
            (KEYS.to_string(), first.0.clone()),
            (VALUES.to_string(), first.1.clone()),
        ]);
        if let Some(second) = second {
            modules.insert(SDXL_CLIP_G.to_string(), mean(&second)?);
            modules.insert(KEYS_2.to_string(), second.0);
            modules.insert(VALUES_2.to_string(), second.1);
        }
        Ok((self.names.clone(), mean(&first)?, modules))
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
    fn encode(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        timesteps: &[usize],
    ) -> Result<(Condition, Option<Tensor>)> {
        self.attention.prepare(sd, captions, &self.names)?;
        self.inner.encode(sd, captions, timesteps)
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
    fn set_extra_tensor(&mut self, name: &str, value: &Tensor) -> Result<()> {
        self.inner.set_extra_tensor(name, value)
    }
    fn identity_parts(&self) -> Result<IdentityParts> {
        self.inner.identity_parts()
    }
}
