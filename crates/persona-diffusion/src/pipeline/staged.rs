//! Per-stage key/value pseudo-tokens (SeFi-IDE): the denoising timesteps are cut into S stages, and each
//! stage has its own *key* and *value* embedding for every pseudo-token. A prompt is encoded twice by the
//! frozen text encoder — once with the key embeddings in the placeholder slots, once with the value
//! embeddings — and every cross-attention layer takes its keys from the first encoding and its values from
//! the second ([`Condition::split`]). Plain tokens of other identities sit in both encodings.
//!
//! Staged tokens are [`LearnedTokens`] whose `rows` are `[2, S, n, d]` (`rows[0]` keys, `rows[1]` values)
//! instead of `[n, d]`, so one list of identities serves every caller and a plain and a staged identity can
//! share a prompt. On SDXL `rows_2` is staged the same way for `text_encoder_2`, and the pooled embeddings
//! the UNet's added conditioning takes come from the *value* encoding: like the values, they carry what is
//! written into the features (through the time embedding, into every ResNet block), while keys only decide
//! where the text is read.

use candle_core::Tensor;

use super::{LearnedTokens, StableDiffusion, TextEncoding};
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
        let rows = stack_stages(names.len(), keys, values, None)?;
        Ok(Self {
            names,
            rows,
            rows_2: None,
        })
    }

    /// SDXL per-stage tokens: `keys`/`values` `[S, n, d1]` for `text_encoder`, `keys_2`/`values_2`
    /// `[S, n, d2]` for `text_encoder_2`, with the same number of stages.
    pub fn staged_sdxl(
        names: Vec<String>,
        (keys, values): (&Tensor, &Tensor),
        (keys_2, values_2): (&Tensor, &Tensor),
    ) -> Result<Self> {
        let rows = stack_stages(names.len(), keys, values, None)?;
        let rows_2 = stack_stages(names.len(), keys_2, values_2, Some(rows.dims()[1]))?;
        Ok(Self {
            names,
            rows,
            rows_2: Some(rows_2),
        })
    }

    /// The number of stages of staged tokens, `None` for plain ones.
    pub fn stages(&self) -> Option<usize> {
        (self.rows.rank() == 4).then(|| self.rows.dims()[1])
    }

    /// The key (or value) embeddings of one stage as plain tokens (both tables on SDXL).
    pub fn at_stage(&self, stage: usize, value: bool) -> Result<Self> {
        let pick = |rows: &Tensor| rows.get(usize::from(value))?.get(stage);
        Ok(Self {
            names: self.names.clone(),
            rows: pick(&self.rows)?,
            rows_2: self.rows_2.as_ref().map(pick).transpose()?,
        })
    }
}

/// `[2, S, n, d]` from keys and values `[S, n, d]`; `stages`: the count they must have (SDXL's second table).
fn stack_stages(n: usize, keys: &Tensor, values: &Tensor, stages: Option<usize>) -> Result<Tensor> {
    let dims = keys.dims().to_vec();
    if dims.len() != 3
        || dims[0] == 0
        || stages.is_some_and(|s| s != dims[0])
        || dims[1] != n
        || values.dims() != dims.as_slice()
    {
        return Err(Error::Msg(format!(
            "staged tokens: keys {:?} and values {:?} must both be [stages, {n}, d]{}",
            keys.dims(),
            values.dims(),
            stages
                .map(|s| format!(" with {s} stages"))
                .unwrap_or_default()
        )));
    }
    Ok(Tensor::stack(&[keys, values], 0)?)
}

impl StableDiffusion {
    /// The condition of prompts at timestep `t` and (SDXL) their pooled embeddings: staged tokens contribute
    /// the key embeddings of their stage of `t` to the key encoding and their value embeddings to the value
    /// encoding, which also gives the pooled embeddings. Without staged tokens this is one plain encoding,
    /// shared by keys and values. `negative`: the unconditional branch ([`Self::encode_negative_with_tokens`]:
    /// SDXL may answer an empty prompt with zeros).
    pub fn encode_at(
        &self,
        prompts: &[&str],
        tokens: &[LearnedTokens],
        t: f64,
        output: Output,
        negative: bool,
    ) -> Result<(Condition, Option<Tensor>)> {
        let encode = |tokens: &[LearnedTokens]| -> Result<TextEncoding> {
            if negative {
                self.encode_negative_with_tokens(prompts, tokens, output)
            } else {
                self.encode_text_with_tokens(prompts, tokens, output)
            }
        };
        if tokens.iter().all(|l| l.stages().is_none()) {
            let e = encode(tokens)?;
            return Ok((Condition::new(e.embeds), e.pooled));
        }
        let train_steps = self.scheduler_config.num_train_timesteps.unwrap_or(1000);
        let at = |value: bool| -> Result<Vec<LearnedTokens>> {
            tokens
                .iter()
                .map(|l| match l.stages() {
                    Some(s) => l.at_stage(stage_of(t, s, train_steps), value),
                    None => Ok(l.clone()),
                })
                .collect()
        };
        let keys = encode(&at(false)?)?;
        let values = encode(&at(true)?)?;
        Ok((Condition::split(keys.embeds, values.embeds), values.pooled))
    }

    /// The condition of prompts at timestep `t` ([`Self::encode_at`] without the pooled embeddings).
    pub fn encode_staged(
        &self,
        prompts: &[&str],
        tokens: &[LearnedTokens],
        t: f64,
        output: Output,
    ) -> Result<Condition> {
        Ok(self.encode_at(prompts, tokens, t, output, false)?.0)
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
