//! CLIP byte-level BPE tokenizer, equal to Hugging Face's `CLIPTokenizer` (the `tokenizers` backend that
//! diffusers pipelines use).
//!
//! The pipeline is assembled here rather than deserialized from `tokenizer.json`, so that both on-disk
//! layouts (hub: `vocab.json` + `merges.txt`; transformers 5: `tokenizer.json` only) tokenize identically:
//! NFC → whitespace runs to one space → lowercase; CLIP's split regex; byte-level mapping; BPE with the
//! `</w>` end-of-word suffix; `<|startoftext|> … <|endoftext|>` around the ids.
//!
//! Special tokens (BOS, EOS, UNK and the pad token) are registered as added tokens, as HF does. For SD 2.x
//! the pad token is `!`, so every `!` in a prompt becomes the pad id 0 (`wow!!!` → `2781 0 0 0`) where
//! open_clip, which SD 2 was trained with, gives `2781 995`. We match diffusers, which is what users' prompts
//! have been tuned on.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer, TruncationParams};

use crate::{Error, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's pre-tokenization: special tokens, English contractions, letter runs, single digits, symbol runs.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// CLIP's text encoder has 77 positions; used when the config does not say.
const DEFAULT_MAX_LENGTH: usize = 77;

/// A CLIP tokenizer with a fixed output length (77 for Stable Diffusion).
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

/// The vocabulary and special-token settings read from either on-disk layout.
struct Files {
    vocab: HashMap<String, u32>,
    merges: Merges,
    /// Tokens to register on top of the BPE vocabulary, in id order.
    added: Vec<(u32, AddedToken)>,
    pad_token: String,
    max_length: usize,
}

impl Files {
    /// Combines the vocabulary with the added tokens the files record (`file_added`, which win) and the
    /// config's special tokens and `added_tokens_decoder`, sorted by id for registration.
    fn new(
        vocab: HashMap<String, u32>,
        merges: Merges,
        mut added: Vec<(u32, AddedToken)>,
        config: TokenizerConfig,
    ) -> Self {
        for (id, token) in config.special_tokens(&vocab) {
            if !added.iter().any(|(_, t)| t.content == token.content) {
                added.push((id, token));
            }
        }
        for (id, token) in config.added_decoder {
            if id as usize >= vocab.len() && !added.iter().any(|(i, _)| *i == id) {
                added.push((id, token));
            }
        }
        added.sort_by_key(|(id, _)| *id);
        Files {
            vocab,
            merges,
            added,
            pad_token: config.pad_token,
            max_length: config.max_length,
        }
    }
}

impl ClipTokenizer {
    /// Loads a `tokenizer/` folder: `tokenizer.json` when present, else `vocab.json` + `merges.txt`; the pad
    /// token and `model_max_length` come from `special_tokens_map.json` / `tokenizer_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = TokenizerConfig::read(dir)?;
        if !dir.join("tokenizer.json").is_file() && !dir.join("vocab.json").is_file() {
            return Err(Error::file(
                dir.join("tokenizer.json"),
                "missing (and no vocab.json + merges.txt beside it): the model folder has no tokenizer",
            ));
        }
        let files = if dir.join("tokenizer.json").is_file() {
            read_tokenizer_json(&dir.join("tokenizer.json"), config)?
        } else {
            read_hub_files(dir, config)?
        };
        Self::build(files)
    }

    fn build(files: Files) -> Result<Self> {
        let id = |token: &str| {
            files
                .vocab
                .get(token)
                .copied()
                .ok_or_else(|| Error::Msg(format!("token {token:?} is not in the vocabulary")))
        };
        let (bos, eos, pad) = (id(BOS)?, id(EOS)?, id(&files.pad_token)?);
        let tokenizer = clip_pipeline(files.vocab, files.merges, bos, eos, files.max_length)?;
        let max_length = files.max_length;
        let mut clip = ClipTokenizer {
            tokenizer,
            bos,
            eos,
            pad,
            max_length,
        };
        clip.register(files.added)?;
        Ok(clip)
    }

    /// Registers added tokens, checking that the ids the tokenizer assigns are the ones the files recorded.
    fn register(&mut self, added: Vec<(u32, AddedToken)>) -> Result<()> {
        for (id, token) in added {
            let content = token.content.clone();
            if token.special {
                self.tokenizer.add_special_tokens(&[token]);
            } else {
                self.tokenizer.add_tokens(&[token]);
            }
            if self.tokenizer.token_to_id(&content) != Some(id) {
                return Err(Error::Msg(format!(
                    "added token {content:?} has id {id}, but ids of added tokens must follow the vocabulary in order"
                )));
            }
        }
        Ok(())
    }

    /// `[BOS, …, EOS]` padded with the pad id to `max_length`, truncated like HF's
    /// `truncation=True, max_length=77` (the EOS is kept).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_unpadded(text)?;
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// `[BOS, …, EOS]` without padding (still truncated to `max_length`).
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// The words of `text` that do not fit in `max_length` ids and are cut by [`Self::encode`] (BPE pieces
    /// joined back into words), `None` when everything fits.
    pub fn cut_words(&self, text: &str) -> Result<Option<String>> {
        let enc = self.tokenizer.encode(text, true).map_err(tok_err)?;
        let special = [self.bos, self.eos, self.pad];
        let mut words = String::new();
        let cut = enc.get_overflowing().iter();
        for (id, tok) in cut.flat_map(|e| e.get_ids().iter().zip(e.get_tokens())) {
            if special.contains(id) {
                continue;
            }
            match tok.strip_suffix("</w>") {
                Some(end) => {
                    words.push_str(end);
                    words.push(' ');
                }
                None => words.push_str(tok),
            }
        }
        let words = words.trim().to_string();
        Ok((!words.is_empty()).then_some(words))
    }

    /// Adds tokens after the vocabulary, like HF `add_tokens` (normalized, not special), returning their new
    /// ids; fails if any of them already exists.
    pub fn add_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>> {
        if let Some(existing) = tokens.iter().find(|t| self.token_id(t).is_some()) {
            return Err(Error::Msg(format!(
                "token {existing:?} is already in the vocabulary"
            )));
        }
        let first = self.vocab_size() as u32;
        let added: Vec<(u32, AddedToken)> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (first + i as u32, AddedToken::from(t.clone(), false)))
            .collect();
        let ids = added.iter().map(|(id, _)| *id).collect();
        self.register(added)?;
        Ok(ids)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Number of ids, added tokens included: the size the text encoder's embedding table must have.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
}

/// HF's CLIP pipeline around a BPE model, truncating to `max_length` ids (BOS and EOS included).
fn clip_pipeline(
    vocab: HashMap<String, u32>,
    merges: Merges,
    bos: u32,
    eos: u32,
    max_length: usize,
) -> Result<Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .unk_token(EOS.into())
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(tok_err)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(tok_err)?;
    let normalizer = NormalizerSequence::new(vec![NFC.into(), whitespace.into(), Lowercase.into()]);
    let split = SplitPattern::Regex(CLIP_SPLIT.into());
    let split = Split::new(split, SplitDelimiterBehavior::Removed, true).map_err(tok_err)?;
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer = PreTokenizerSequence::new(vec![split.into(), byte_level.into()]);
    let post = RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
        .trim_offsets(false)
        .add_prefix_space(false);
    tokenizer
        .with_normalizer(Some(normalizer))
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(post));
    let truncation = TruncationParams {
        max_length,
        ..Default::default()
    };
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(tok_err)?;
    Ok(tokenizer)
}

fn tok_err(e: tokenizers::Error) -> Error {
    Error::Msg(format!("tokenizer: {e}"))
}

/// The special-token settings of `tokenizer_config.json`, overridden by `special_tokens_map.json`.
struct TokenizerConfig {
    /// bos, eos, unk, pad as (content, normalized) — HF registers them in this order, the last flag winning.
    specials: Vec<(String, bool)>,
    pad_token: String,
    max_length: usize,
    /// `added_tokens_decoder` of the config (hub layout written by recent transformers).
    added_decoder: Vec<(u32, AddedToken)>,
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self> {
        let config = read_optional_json(&dir.join("tokenizer_config.json"))?;
        let map = read_optional_json(&dir.join("special_tokens_map.json"))?;
        let spec = |key: &str, default: &str| -> (String, bool) {
            [&map, &config]
                .iter()
                .find_map(|v| special_spec(v.get(key)?))
                .unwrap_or((default.into(), false))
        };
        let specials = vec![
            spec("bos_token", BOS),
            spec("eos_token", EOS),
            spec("unk_token", EOS),
            spec("pad_token", EOS),
        ];
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|m| (1.0..1e9).contains(m))
            .map_or(DEFAULT_MAX_LENGTH, |m| m as usize);
        let mut added_decoder = Vec::new();
        if let Some(Value::Object(decoder)) = config.get("added_tokens_decoder") {
            for (id, token) in decoder {
                let id = id.parse().map_err(|_| {
                    Error::file(dir.join("tokenizer_config.json"), format!("bad id {id:?}"))
                })?;
                let token = AddedToken::deserialize(token)
                    .map_err(|e| Error::file(dir.join("tokenizer_config.json"), e))?;
                added_decoder.push((id, token));
            }
        }
        Ok(TokenizerConfig {
            pad_token: specials[3].0.clone(),
            specials,
            max_length,
            added_decoder,
        })
    }

    /// The special tokens as added tokens with their vocabulary ids, in registration order.
    fn special_tokens(&self, vocab: &HashMap<String, u32>) -> Vec<(u32, AddedToken)> {
        let mut tokens: Vec<(u32, AddedToken)> = Vec::new();
        for (content, normalized) in &self.specials {
            let Some(&id) = vocab.get(content) else {
                continue;
            };
            tokens.retain(|(_, t)| &t.content != content);
            tokens.push((
                id,
                AddedToken::from(content.clone(), true).normalized(*normalized),
            ));
        }
        tokens
    }
}

/// A special token given as a string (not normalized) or as an `AddedToken` object.
fn special_spec(v: &Value) -> Option<(String, bool)> {
    match v {
        Value::String(s) => Some((s.clone(), false)),
        Value::Object(o) => Some((
            o.get("content")?.as_str()?.into(),
            o.get("normalized")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        )),
        _ => None,
    }
}

/// Hub layout: `vocab.json`, `merges.txt` and optional `added_tokens.json`.
fn read_hub_files(dir: &Path, config: TokenizerConfig) -> Result<Files> {
    let vocab_path = dir.join("vocab.json");
    let vocab: HashMap<String, u32> = parse_json(&vocab_path)?;
    let merges_path = dir.join("merges.txt");
    let text = read(&merges_path)?;
    let merges = text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| match l.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(Error::file(
                &merges_path,
                format!("merge {} is not two symbols: {l:?}", i + 1),
            )),
        })
        .collect::<Result<Merges>>()?;
    let user_tokens = read_optional_json(&dir.join("added_tokens.json"))?;
    let user_tokens: HashMap<String, u32> = serde_json::from_value(user_tokens)
        .map_err(|e| Error::file(dir.join("added_tokens.json"), e))?;
    let added = user_tokens
        .into_iter()
        .map(|(t, id)| (id, AddedToken::from(t, false)))
        .collect();
    Ok(Files::new(vocab, merges, added, config))
}

#[derive(Deserialize)]
struct TokenizerJson {
    model: BpeJson,
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
}

#[derive(Deserialize)]
struct BpeJson {
    vocab: HashMap<String, u32>,
    merges: Vec<MergeJson>,
}

/// tokenizers ≥ 0.20 store merges as pairs, older versions as `"a b"` strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeJson {
    Pair(String, String),
    Joined(String),
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    #[serde(flatten)]
    token: AddedToken,
}

/// transformers 5 layout: one `tokenizer.json` holding vocabulary, merges and added tokens.
fn read_tokenizer_json(path: &Path, config: TokenizerConfig) -> Result<Files> {
    let json: TokenizerJson = parse_json(path)?;
    let merges = json
        .model
        .merges
        .into_iter()
        .map(|m| match m {
            MergeJson::Pair(a, b) => Ok((a, b)),
            MergeJson::Joined(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::file(path, format!("bad merge {s:?}"))),
        })
        .collect::<Result<Merges>>()?;
    let added = json
        .added_tokens
        .into_iter()
        .map(|t| (t.id, t.token))
        .collect();
    Ok(Files::new(json.model.vocab, merges, added, config))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read(path)?).map_err(|e| Error::file(path, e))
}

/// A JSON file that may be absent (→ empty object).
fn read_optional_json(path: &Path) -> Result<Value> {
    if path.is_file() {
        parse_json(path)
    } else {
        Ok(Value::Object(Default::default()))
    }
}
