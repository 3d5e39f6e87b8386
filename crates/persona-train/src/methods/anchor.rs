//! Cross Initialization's textual identity anchor: the mean input embeddings of celebrity-name tokens, passed
//! through the frozen text encoder.

use std::path::Path;

use candle_core::{Tensor, D};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::models::ClipTextModel;
use persona_diffusion::nn::grad::upcast;
use persona_diffusion::pipeline::StableDiffusion;
use persona_diffusion::tokenizer::ClipTokenizer;

use crate::{Error, Result};

/// The bundled celebrity-name list (691 lines; duplicates weigh double).
const BUNDLED_NAMES: &str = include_str!("../../../../data/celeb_names.txt");

/// One token table of a model: its tokenizer and text encoder. SD 1.x/2.x have one, SDXL two (a learned
/// pseudo-token has a row in each, initialised and anchored in each table's own space).
#[derive(Clone, Copy)]
pub struct Table<'a> {
    pub tokenizer: &'a ClipTokenizer,
    pub encoder: &'a ClipTextModel,
}

impl<'a> Table<'a> {
    /// `text_encoder` with `tokenizer`.
    pub fn first(sd: &'a StableDiffusion) -> Self {
        Self {
            tokenizer: &sd.tokenizer,
            encoder: &sd.text_encoder,
        }
    }

    /// SDXL's `text_encoder_2` with `tokenizer_2`; `None` for SD 1.x/2.x.
    pub fn second(sd: &'a StableDiffusion) -> Option<Self> {
        sd.sdxl.as_ref().map(|x| Self {
            tokenizer: &x.tokenizer_2,
            encoder: &x.text_encoder_2.model,
        })
    }
}

/// Reads a names file (or the bundled list): one name a line, blank lines ignored.
pub fn read_names(path: Option<&Path>) -> Result<Vec<String>> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
        None => BUNDLED_NAMES.to_string(),
    };
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(Error::Msg(format!(
            "{}: no names",
            path.map_or("bundled list".into(), |p| p.display().to_string())
        )));
    }
    Ok(names)
}

/// Column means `m [n, d]`: column i averages the input embedding of the (i+1)-th BPE token of every name
/// that has one (`[BOS, t1 … tk, EOS]`), with the count of names per column.
pub fn column_means(
    sd: &StableDiffusion,
    names: &[String],
    n: usize,
) -> Result<(Tensor, Vec<usize>)> {
    column_means_in(Table::first(sd), names, n)
}

/// [`column_means`] in one token table.
pub fn column_means_in(t: Table, names: &[String], n: usize) -> Result<(Tensor, Vec<usize>)> {
    let table = t.encoder.token_embedding();
    let mut cols = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    for i in 0..n {
        let mut ids = Vec::new();
        for name in names {
            let toks = t.tokenizer.encode_unpadded(name)?;
            let words = &toks[1..toks.len() - 1];
            if let Some(&t) = words.get(i) {
                ids.push(t);
            }
        }
        if ids.is_empty() {
            return Err(Error::Msg(format!(
                "no name has a token {}: cannot build anchor column {i}",
                i + 1
            )));
        }
        counts.push(ids.len());
        // Averaged in f32 (f64 in gradient tests) whatever the model's precision.
        let rows = upcast(&table.index_select(&Tensor::new(ids, table.device())?, 0)?)?;
        cols.push(rows.mean(0)?);
    }
    Ok((Tensor::stack(&cols, 0)?, counts))
}

/// Runs `[emb(BOS), rows…, emb(EOS), emb(pad)…]` through the text encoder and returns the outputs at the rows'
/// positions: the anchor `init [n, d]`.
pub fn encode_rows(sd: &StableDiffusion, rows: &Tensor) -> Result<Tensor> {
    encode_rows_in(Table::first(sd), rows)
}

/// [`encode_rows`] through one table's text encoder (its final-layer-normed last state).
pub fn encode_rows_in(t: Table, rows: &Tensor) -> Result<Tensor> {
    let n = rows.dim(0)?;
    let tok = t.tokenizer;
    let len = tok.max_length();
    if n + 2 > len {
        return Err(Error::Msg(format!(
            "{n} tokens do not fit a {len}-token prompt"
        )));
    }
    let mut ids = vec![tok.bos_id()];
    ids.extend(std::iter::repeat_n(tok.pad_id(), n));
    ids.push(tok.eos_id());
    ids.resize(len, tok.pad_id());
    let ids = Tensor::new(ids, rows.device())?.unsqueeze(0)?;
    let mut embeds = t.encoder.embed(&ids)?.squeeze(0)?;
    let d = embeds.dim(D::Minus1)?;
    embeds = Tensor::cat(
        &[
            embeds.narrow(0, 0, 1)?,
            rows.clone(),
            embeds.narrow(0, n + 1, len - n - 1)?,
        ],
        0,
    )?;
    let out = t
        .encoder
        .forward_embeds(&embeds.reshape((1, len, d))?, Output::Last)?;
    Ok(out.squeeze(0)?.narrow(0, 1, n)?)
}

/// Cross Initialization's anchor from a names list.
pub fn cross_init_anchor(sd: &StableDiffusion, names: &[String], n: usize) -> Result<Tensor> {
    cross_init_anchor_in(Table::first(sd), names, n)
}

/// [`cross_init_anchor`] in one token table (SDXL: one anchor per text encoder).
pub fn cross_init_anchor_in(t: Table, names: &[String], n: usize) -> Result<Tensor> {
    let (means, counts) = column_means_in(t, names, n)?;
    tracing::info!(?counts, "cross-init anchor columns");
    encode_rows_in(t, &means)
}

/// The alternative anchor from given words (`--init-words "w1 w2"`): their input embeddings through the
/// encoder, outputs at their positions.
pub fn words_anchor(sd: &StableDiffusion, words: &str, n: usize) -> Result<Tensor> {
    words_anchor_in(Table::first(sd), words, n)
}

/// [`words_anchor`] in one token table.
pub fn words_anchor_in(t: Table, words: &str, n: usize) -> Result<Tensor> {
    let rows = word_rows_in(t, words, n)?;
    encode_rows_in(t, &rows)
}

/// Input embeddings of the first `n` tokens of `words`, repeating the last when there are fewer.
pub fn word_rows(sd: &StableDiffusion, words: &str, n: usize) -> Result<Tensor> {
    word_rows_in(Table::first(sd), words, n)
}

/// [`word_rows`] in one token table.
pub fn word_rows_in(t: Table, words: &str, n: usize) -> Result<Tensor> {
    let toks = t.tokenizer.encode_unpadded(words)?;
    let inner = &toks[1..toks.len() - 1];
    if inner.is_empty() {
        return Err(Error::Msg(format!("init words {words:?} give no tokens")));
    }
    let ids: Vec<u32> = (0..n).map(|i| inner[i.min(inner.len() - 1)]).collect();
    let table = t.encoder.token_embedding();
    Ok(upcast(
        &table.index_select(&Tensor::new(ids, table.device())?, 0)?,
    )?)
}
