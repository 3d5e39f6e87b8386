//! Prompts with learned pseudo-tokens: the tokenizer gains the new tokens, the frozen embedding table is
//! looked up for every other token, and the learned rows are placed at the new tokens' positions with a
//! gradient path to them only (so training and generation share one encoding).

use candle_core::Tensor;

use super::sdxl::{layers_from_end, TextEncoding};
use super::StableDiffusion;
use crate::models::clip_text::{ClipTextModel, Output};
use crate::nn::grad::place_rows;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// Pseudo-tokens and their input embeddings `[n, d]` (a `Var` during training), or per-stage key/value
/// embeddings `[2, S, n, d]` (see [`LearnedTokens::staged`]).
///
/// SDXL has two token tables, so an SDXL pseudo-token has a row in each: `rows` `[n, d1]` for `text_encoder`
/// (CLIP-L, 768 wide) and `rows_2` `[n, d2]` for `text_encoder_2` (OpenCLIP bigG, 1280 wide). `rows_2` is
/// `None` for SD 1.x/2.x tokens; tokens of one kind are refused by a model of the other.
#[derive(Clone, Debug)]
pub struct LearnedTokens {
    pub names: Vec<String>,
    pub rows: Tensor,
    pub rows_2: Option<Tensor>,
}

impl LearnedTokens {
    /// Plain tokens of an SD 1.x/2.x model (one table).
    pub fn new(names: Vec<String>, rows: Tensor) -> Self {
        Self {
            names,
            rows,
            rows_2: None,
        }
    }

    /// The tokens joined by spaces: what a placeholder in a prompt expands to.
    pub fn phrase(&self) -> String {
        self.names.join(" ")
    }
}

/// The ids of `prompts` with `names` added to the tokenizer (the real ids, added tokens included:
/// `[B, L]`), and the input embeddings with the learned `rows` placed at the added tokens' positions (the
/// frozen table is looked up for every other token; gradients reach `rows` only).
fn embed_with_rows(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextModel,
    prompts: &[&str],
    names: &[String],
    rows: &Tensor,
) -> Result<(Tensor, Tensor)> {
    for name in names {
        if tokenizer.token_id(name).is_some() {
            return Err(Error::Msg(format!(
                "token {name} is already in the vocabulary; choose another name"
            )));
        }
    }
    let d = encoder.config().hidden_size;
    if rows.dim(1)? != d {
        return Err(Error::Msg(format!(
            "learned embeddings have width {}, the text encoder {d}",
            rows.dim(1)?
        )));
    }
    let mut tok = tokenizer.clone();
    let ids = tok.add_tokens(names)?;
    let mut positions = Vec::new();
    let (mut real, mut looked_up) = (Vec::new(), Vec::new());
    for (b, p) in prompts.iter().enumerate() {
        let row = tok.encode(p)?;
        real.extend_from_slice(&row);
        for (l, id) in row.iter().enumerate() {
            match ids.iter().position(|x| x == id) {
                Some(r) => {
                    positions.push((b, l, r));
                    looked_up.push(tok.pad_id());
                }
                None => looked_up.push(*id),
            }
        }
    }
    let device = encoder.token_embedding().device();
    let real = Tensor::from_vec(real, (prompts.len(), ()), device)?;
    let looked_up = Tensor::from_vec(looked_up, (prompts.len(), ()), device)?;
    let base = encoder.embed(&looked_up)?;
    let embeds = place_rows(&base, &rows.to_dtype(base.dtype())?, &positions)?;
    Ok((real, embeds))
}

impl StableDiffusion {
    /// Encodes prompts that may contain the learned tokens of several identities (SDXL: the concatenated
    /// condition of [`Self::encode_text_with_tokens`]).
    pub fn encode_with_tokens(
        &self,
        prompts: &[&str],
        learned: &[LearnedTokens],
        output: Output,
    ) -> Result<Tensor> {
        if learned.is_empty() {
            return self.encode_prompts(prompts, output);
        }
        if self.is_sdxl() {
            return Ok(self
                .encode_text_with_tokens(prompts, learned, output)?
                .embeds);
        }
        let names = Self::check_tokens(learned, false)?;
        let rows = Tensor::cat(
            &learned.iter().map(|l| l.rows.clone()).collect::<Vec<_>>(),
            0,
        )?;
        let (_, embeds) =
            embed_with_rows(&self.tokenizer, &self.text_encoder, prompts, &names, &rows)?;
        self.text_encoder.forward_embeds(&embeds, output)
    }

    /// [`Self::encode_text`] with learned tokens: for SDXL each pseudo-token's `rows` go into
    /// `text_encoder`'s input and its `rows_2` into `text_encoder_2`'s; the pooled embeddings are taken where
    /// transformers pools the *real* ids (added tokens included: with `eos_token_id` 2 that is the highest id,
    /// so a learned token's position when the prompt has one, exactly as diffusers does after
    /// `load_textual_inversion`). SD 1.x/2.x: [`Self::encode_with_tokens`] and no pooled embeddings.
    pub fn encode_text_with_tokens(
        &self,
        prompts: &[&str],
        learned: &[LearnedTokens],
        output: Output,
    ) -> Result<TextEncoding> {
        if learned.is_empty() {
            return self.encode_text(prompts, output);
        }
        let Some(x) = &self.sdxl else {
            return Ok(TextEncoding {
                embeds: self.encode_with_tokens(prompts, learned, output)?,
                pooled: None,
            });
        };
        let names = Self::check_tokens(learned, true)?;
        let cat = |f: &dyn Fn(&LearnedTokens) -> Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&learned.iter().map(f).collect::<Vec<_>>(), 0)?)
        };
        let rows = cat(&|l| l.rows.clone())?;
        let rows_2 = cat(&|l| l.rows_2.clone().expect("checked"))?;
        let from_end = layers_from_end(output);
        let (_, e1) = embed_with_rows(&self.tokenizer, &self.text_encoder, prompts, &names, &rows)?;
        let (h1, _) = self
            .text_encoder
            .forward_embeds_hidden(&e1, from_end, false)?;
        let model_2 = &x.text_encoder_2.model;
        let (ids_2, e2) = embed_with_rows(&x.tokenizer_2, model_2, prompts, &names, &rows_2)?;
        let (h2, last) = model_2.forward_embeds_hidden(&e2, from_end, true)?;
        let last = last.ok_or_else(|| Error::Msg("no last hidden state".into()))?;
        let pooled = x
            .text_encoder_2
            .project(&last, &x.text_encoder_2.pool_positions(&ids_2)?)?;
        Ok(TextEncoding {
            embeds: Tensor::cat(&[h1, h2], 2)?,
            pooled: Some(pooled),
        })
    }

    /// The names of plain tokens of the right kind (SDXL tokens carry `rows_2`, SD 1.x/2.x tokens do not).
    fn check_tokens(learned: &[LearnedTokens], sdxl: bool) -> Result<Vec<String>> {
        for l in learned {
            if l.rows.rank() != 2 {
                return Err(Error::Msg(format!(
                    "tokens {} are per-stage key/value tokens: encode them with encode_at",
                    l.phrase()
                )));
            }
            match (&l.rows_2, sdxl) {
                (None, true) => {
                    return Err(Error::Msg(format!(
                        "tokens {} have no text_encoder_2 rows: they were made for an SD 1.x/2.x model, this \
                         model is SDXL",
                        l.phrase()
                    )))
                }
                (Some(_), false) => {
                    return Err(Error::Msg(format!(
                        "tokens {} are SDXL tokens (rows for two text encoders); this model is not SDXL",
                        l.phrase()
                    )))
                }
                _ => {}
            }
        }
        Ok(learned.iter().flat_map(|l| l.names.clone()).collect())
    }
}

/// Expands identity placeholders in a prompt: `{}` and `{0}` become the first identity's token phrase, `{1}`
/// the second's, …, and each identity's own name (e.g. `<alice>`) its phrase. `identities` are
/// `(name, phrase)` pairs in order.
pub fn expand_prompt(prompt: &str, identities: &[(String, String)]) -> Result<String> {
    let mut out = prompt.to_string();
    if let Some((_, first)) = identities.first() {
        out = out.replace("{}", first);
    }
    for (i, (name, phrase)) in identities.iter().enumerate() {
        out = out.replace(&format!("{{{i}}}"), phrase);
        // Whole-word replacement so `<alice>_v0` (already expanded) is not expanded again.
        out = out
            .split(' ')
            .map(|w| if w == name { phrase.as_str() } else { w })
            .collect::<Vec<_>>()
            .join(" ");
    }
    if let Some(start) = out.find('{') {
        if out[start..].find('}').is_some_and(|end| {
            out[start + 1..start + end]
                .chars()
                .all(|c| c.is_ascii_digit())
        }) {
            return Err(Error::Msg(format!(
                "prompt {prompt:?} has a placeholder without an identity (got {} --identity)",
                identities.len()
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_prompt;

    #[test]
    fn placeholders_expand() {
        let ids = vec![
            ("<a>".to_string(), "<a>_v0 <a>_v1".to_string()),
            ("<b>".to_string(), "<b>_v0".to_string()),
        ];
        assert_eq!(
            expand_prompt("a {} person and a {1} person", &ids).unwrap(),
            "a <a>_v0 <a>_v1 person and a <b>_v0 person"
        );
        assert_eq!(
            expand_prompt("{0} with <b>", &ids).unwrap(),
            "<a>_v0 <a>_v1 with <b>_v0"
        );
        assert!(expand_prompt("{2} alone", &ids).is_err());
        assert!(expand_prompt("a {} person", &[]).is_err());
    }
}
