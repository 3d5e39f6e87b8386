//! Per-stage key/value pseudo-tokens (SeFi-IDE): the denoising timesteps are cut into S stages, and each
//! stage has its own *key* and *value* embedding for every pseudo-token. A prompt is encoded twice by the
//! frozen text encoder — once with the key embeddings in the placeholder slots, once with the value
//! embeddings — and every cross-attention layer takes its keys from the first encoding and its values from
//! the second ([`Condition::split`]). Plain tokens of other identities sit in both encodings.
//!
//! Staged tokens are [`LearnedTokens`] whose `rows` are `[2, S, n, d]` (`rows[0]` keys, `rows[1]` values)
//! instead of `[n, d]`, so one list of identities serves every caller and a plain and a staged identity can
//! share a prompt.

use candle_core::Tensor;

use super::{LearnedTokens, StableDiffusion};
use crate::models::clip_text::Output;
use crate::nn::Condition;
use crate::{Error, Result};

/// The stage of timestep `t` among `stages` equal spans of `0..num_train_timesteps`: `⌊t·S/T⌋`, clamped to
/// `S − 1` (fractional timesteps of Karras-sigma samplers included). Stage 0 holds the lowest timesteps (fine
/// detail), stage S − 1 the highest (layout).
pub fn stage_of(t: f64, stages: usize, num_train_timesteps: usize) -> usize {
    let s = (t.max(0.0) * stages as f64 / num_train_timesteps.max(1) as f64).floor() as usize;
    s.min(stages.saturating_sub(1))
}

impl LearnedTokens {
    /// Per-stage tokens from `keys` and `values`, both `[S, n, d]` with one name per token.
    pub fn staged(names: Vec<String>, keys: &Tensor, values: &Tensor) -> Result<Self> {
        let dims = keys.dims().to_vec();
        if dims.len() != 3
            || dims[0] == 0
            || dims[1] != names.len()
            || values.dims() != dims.as_slice()
        {
            return Err(Error::Msg(format!(
                "staged tokens: keys {:?} and values {:?} must both be [stages, {}, d]",
                keys.dims(),
                values.dims(),
                names.len()
            )));
        }
        Ok(Self {
            names,
            rows: Tensor::stack(&[keys, values], 0)?,
            rows_2: None,
        })
    }

    /// The number of stages of staged tokens, `None` for plain ones.
    pub fn stages(&self) -> Option<usize> {
        (self.rows.rank() == 4).then(|| self.rows.dims()[1])
    }

    /// The key (or value) embeddings of one stage as plain tokens.
    pub fn at_stage(&self, stage: usize, value: bool) -> Result<Self> {
        Ok(Self {
            names: self.names.clone(),
            rows: self.rows.get(usize::from(value))?.get(stage)?,
            rows_2: None,
        })
    }
}

impl StableDiffusion {
    /// The condition of prompts at timestep `t`: staged tokens contribute the key embeddings of their stage of
    /// `t` to the key encoding and their value embeddings to the value encoding. Without staged tokens this is
    /// one plain encoding ([`Self::encode_with_tokens`]), shared by keys and values.
    pub fn encode_staged(
        &self,
        prompts: &[&str],
        tokens: &[LearnedTokens],
        t: f64,
        output: Output,
    ) -> Result<Condition> {
        if tokens.iter().all(|l| l.stages().is_none()) {
            return Ok(Condition::new(
                self.encode_with_tokens(prompts, tokens, output)?,
            ));
        }
        let train_steps = self.scheduler_config.num_train_timesteps.unwrap_or(1000);
        let encode = |value: bool| -> Result<Tensor> {
            let at = |l: &LearnedTokens| match l.stages() {
                Some(s) => l.at_stage(stage_of(t, s, train_steps), value),
                None => Ok(l.clone()),
            };
            self.encode_with_tokens(
                prompts,
                &tokens.iter().map(at).collect::<Result<Vec<_>>>()?,
                output,
            )
        };
        Ok(Condition::split(encode(false)?, encode(true)?))
    }

    /// The stage of every staged token set at `t` (empty without any): steps with equal stages share encodings.
    pub fn stages_at(&self, tokens: &[LearnedTokens], t: f64) -> Vec<usize> {
        let train_steps = self.scheduler_config.num_train_timesteps.unwrap_or(1000);
        tokens
            .iter()
            .filter_map(LearnedTokens::stages)
            .map(|s| stage_of(t, s, train_steps))
            .collect()
    }
}
