//! Prompts with learned pseudo-tokens: the tokenizer gains the new tokens, the frozen embedding table is
//! looked up for every other token, and the learned rows are placed at the new tokens' positions with a
//! gradient path to them only (so training and generation share one encoding).

use candle_core::Tensor;

use super::StableDiffusion;
use crate::models::clip_text::Output;
use crate::nn::grad::place_rows;
use crate::{Error, Result};

/// Pseudo-tokens and their input embeddings `[n, d]` (a `Var` during training), or per-stage key/value
/// embeddings `[2, S, n, d]` (see [`LearnedTokens::staged`]).
#[derive(Clone, Debug)]
pub struct LearnedTokens {
    pub names: Vec<String>,
    pub rows: Tensor,
}

impl LearnedTokens {
    /// The tokens joined by spaces: what a placeholder in a prompt expands to.
    pub fn phrase(&self) -> String {
        self.names.join(" ")
    }
}

impl StableDiffusion {
    /// Encodes prompts that may contain the learned tokens of several identities.
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
            return Err(Error::Msg(
                "learned tokens (identities) are not supported on SDXL yet: they need rows for both token \
                 tables"
                    .into(),
            ));
        }
        let mut tok = self.tokenizer.clone();
        let names: Vec<String> = learned.iter().flat_map(|l| l.names.clone()).collect();
        for name in &names {
            if self.tokenizer.token_id(name).is_some() {
                return Err(Error::Msg(format!(
                    "token {name} is already in the vocabulary; choose another name"
                )));
            }
        }
        if let Some(l) = learned.iter().find(|l| l.rows.rank() != 2) {
            return Err(Error::Msg(format!(
                "tokens {} are per-stage key/value tokens: encode them with encode_staged",
                l.phrase()
            )));
        }
        let ids = tok.add_tokens(&names)?;
        let rows = Tensor::cat(
            &learned.iter().map(|l| l.rows.clone()).collect::<Vec<_>>(),
            0,
        )?;
        let d = self.text_encoder.config().hidden_size;
        if rows.dim(1)? != d {
            return Err(Error::Msg(format!(
                "learned embeddings have width {}, the text encoder {d}",
                rows.dim(1)?
            )));
        }
        let mut positions = Vec::new();
        let mut all = Vec::new();
        for (b, p) in prompts.iter().enumerate() {
            let mut row = tok.encode(p)?;
            for (l, id) in row.iter_mut().enumerate() {
                if let Some(r) = ids.iter().position(|x| x == id) {
                    positions.push((b, l, r));
                    *id = tok.pad_id();
                }
            }
            all.extend(row);
        }
        let ids = Tensor::from_vec(all, (prompts.len(), ()), &self.device)?;
        let base = self.text_encoder.embed(&ids)?;
        let embeds = place_rows(&base, &rows.to_dtype(base.dtype())?, &positions)?;
        self.text_encoder.forward_embeds(&embeds, output)
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
