//! SeFi-IDE's subject-wise attention loss, as a component any method can carry (`--attn-loss λ`).
//!
//! For the training caption ("a photo of a face of V*") and its *reference* — the same caption with every
//! pseudo-token replaced by the class word ("a photo of a face of person"), so the two are token-aligned —
//! the selected cross-attention layers score the same UNet queries against both conditions. The loss is
//! `λ · mean_layers mean_{batch, heads, pixels, tokens} (A_t[…, j_k] − stopgrad(A_r[…, j_k]))²`, where `j_k` is
//! the position of pseudo-token k (where the reference has the class word). Each layer weighs the same
//! whatever its pixel count. No face mask is involved, so a dog or a car works with its class word.

use std::cell::RefCell;

use candle_core::{DType, Tensor};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::grad::{add, matmul, upcast};
use persona_diffusion::nn::{AttentionControl, LayerId};
use persona_diffusion::pipeline::StableDiffusion;

use crate::{Error, Result};

/// Which cross-attention layers the loss reads (`--attn-layers`, comma separated): `1/2` selects the layers
/// whose feature map is half the latent side (32×32 for a 64×64 latent, i.e. 512² input on SD 1.x/2.x), `1/4`
/// a quarter (16×16), `1` the full latent side, `all` every layer, anything else a module-path prefix
/// (`up_blocks.1`, `mid_block`). Default `1/2,1/4`: the paper's 16×16 and 32×32 layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSelect {
    items: Vec<Selector>,
    latent_side: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Selector {
    All,
    /// The latent side divided by this.
    Fraction(usize),
    Prefix(String),
}

impl LayerSelect {
    pub const DEFAULT: &'static str = "1/2,1/4";

    /// Parses a selection for training at a latent side of `latent_side` pixels (resolution / VAE factor).
    pub fn parse(spec: &str, latent_side: usize) -> Result<Self> {
        let items = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| match item {
                "all" => Ok(Selector::All),
                "1" => Ok(Selector::Fraction(1)),
                _ => match item.strip_prefix("1/") {
                    Some(d) => d
                        .parse::<usize>()
                        .ok()
                        .filter(|&d| d > 0)
                        .map(Selector::Fraction)
                        .ok_or_else(|| {
                            Error::Msg(format!(
                                "--attn-layers: {item:?} is not a fraction 1/N of the latent side"
                            ))
                        }),
                    None => Ok(Selector::Prefix(item.to_string())),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            return Err(Error::Msg(format!(
                "--attn-layers {spec:?} selects nothing"
            )));
        }
        Ok(Self { items, latent_side })
    }

    pub fn selects(&self, layer: &LayerId) -> bool {
        self.items.iter().any(|s| match s {
            Selector::All => true,
            Selector::Fraction(d) => layer.resolution.0 * d == self.latent_side,
            Selector::Prefix(p) => layer.name.starts_with(p.as_str()),
        })
    }
}

/// What one step captured.
#[derive(Default)]
struct StepState {
    /// Reference condition `[B, 77, d]` of the step's captions.
    reference: Option<Tensor>,
    /// One-hot column selector `[B, 1, 77, n]`: column k of sample b picks pseudo-token k's position.
    columns: Option<Tensor>,
    trained: Vec<(LayerId, Tensor)>,
    referenced: Vec<(LayerId, Tensor)>,
    seen: Vec<LayerId>,
}

/// The attention loss and the cross-attention control that collects what it needs.
pub struct SubjectAttention {
    pub class_word: String,
    class_id: u32,
    pub weight: f64,
    pub layers: LayerSelect,
    state: RefCell<StepState>,
}

impl SubjectAttention {
    /// `class_word` must be one token of the tokenizer (so caption and reference stay token-aligned).
    pub fn new(
        sd: &StableDiffusion,
        class_word: &str,
        weight: f64,
        layers: LayerSelect,
    ) -> Result<Self> {
        let ids = sd.tokenizer.encode_unpadded(class_word)?;
        if ids.len() != 3 {
            return Err(Error::Msg(format!(
                "class word {class_word:?} is {} tokens; the attention loss needs a one-token word (person, dog, cat, car…)",
                ids.len().saturating_sub(2)
            )));
        }
        Ok(Self {
            class_word: class_word.to_string(),
            class_id: ids[1],
            weight,
            layers,
            state: RefCell::default(),
        })
    }

    /// Prepares a step: the reference captions' condition and the pseudo-tokens' positions. `pseudo` are the
    /// pseudo-token names, each of which must occur once in every caption.
    pub fn prepare(
        &self,
        sd: &StableDiffusion,
        captions: &[&str],
        pseudo: &[String],
    ) -> Result<()> {
        let l = sd.tokenizer.encode("")?.len();
        let n = pseudo.len();
        let mut references = Vec::new();
        let mut onehot = vec![0f32; captions.len() * l * n];
        // Longest names first, so `<a>_v1` never replaces the start of `<a>_v10`.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(pseudo[k].len()));
        let to_reference = |text: &str| {
            order.iter().fold(text.to_string(), |t, &k| {
                t.replace(&pseudo[k], &self.class_word)
            })
        };
        for (b, caption) in captions.iter().enumerate() {
            let reference = to_reference(caption);
            let ids = sd.tokenizer.encode(&reference)?;
            for (k, name) in pseudo.iter().enumerate() {
                let at = match caption.matches(name.as_str()).count() {
                    1 => caption.find(name.as_str()).unwrap_or(0),
                    c => return Err(Error::Msg(format!("caption {caption:?} has pseudo-token {name} {c} times; the attention loss needs it once"))),
                };
                // The class word is one token, like the pseudo-token it replaces: its position is the number of
                // tokens before it (BOS included).
                let j = sd
                    .tokenizer
                    .encode_unpadded(&to_reference(&caption[..at]))?
                    .len()
                    - 1;
                if ids.get(j) != Some(&self.class_id)
                    || !second_aligned(sd, &reference, &self.class_word, j)?
                {
                    return Err(Error::Msg(format!("caption {caption:?}: pseudo-token {name} does not align with {:?} in the reference (truncated?)", self.class_word)));
                }
                onehot[(b * l + j) * n + k] = 1.0;
            }
            references.push(reference);
        }
        let refs: Vec<&str> = references.iter().map(String::as_str).collect();
        // SDXL: both encoders' states side by side, as the trained caption's condition.
        let reference = sd.encode_text(&refs, Output::Last)?.embeds.detach();
        let columns = Tensor::from_vec(onehot, (captions.len(), 1, l, n), &sd.device)?
            .to_dtype(reference.dtype())?;
        *self.state.borrow_mut() = StepState {
            reference: Some(reference),
            columns: Some(columns),
            ..Default::default()
        };
        Ok(())
    }

    /// The unweighted loss of the step's captures, which are cleared. An error when no layer was selected.
    pub fn unweighted(&self) -> Result<Tensor> {
        let state = std::mem::take(&mut *self.state.borrow_mut());
        let columns = state
            .columns
            .ok_or_else(|| Error::Msg("attention loss read before a step was prepared".into()))?;
        if state.trained.is_empty() {
            let seen: Vec<String> = state.seen.iter().map(ToString::to_string).collect();
            return Err(Error::Msg(format!(
                "--attn-layers selects none of the cross-attention layers: {}",
                seen.join(", ")
            )));
        }
        let mut total: Option<Tensor> = None;
        for ((layer, trained), (_, referenced)) in state.trained.iter().zip(&state.referenced) {
            let pick = |probs: &Tensor| {
                matmul(
                    probs,
                    &columns
                        .broadcast_as((
                            probs.dim(0)?,
                            probs.dim(1)?,
                            probs.dim(3)?,
                            columns.dim(3)?,
                        ))?
                        .contiguous()?,
                )
            };
            let diff = add(&pick(trained)?, &pick(referenced)?.neg()?)?;
            let term = diff.sqr()?.mean_all()?;
            tracing::trace!(
                "attention loss at {layer}: {}",
                term.to_dtype(DType::F32)?.to_scalar::<f32>()?
            );
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        let total = total.expect("non-empty");
        Ok((total / state.trained.len() as f64)?)
    }

    /// `λ ·` [`Self::unweighted`].
    pub fn loss(&self) -> Result<Tensor> {
        Ok((self.unweighted()? * self.weight)?)
    }
}

/// SDXL: whether `tokenizer_2` also has `class_word`, as one token, at position `j` of `reference` (the
/// condition joins the two encoders' states position by position, so both must agree). Always true for
/// SD 1.x/2.x.
fn second_aligned(
    sd: &StableDiffusion,
    reference: &str,
    class_word: &str,
    j: usize,
) -> Result<bool> {
    let Some(x) = &sd.sdxl else {
        return Ok(true);
    };
    let word = x.tokenizer_2.encode_unpadded(class_word)?;
    Ok(word.len() == 3 && x.tokenizer_2.encode(reference)?.get(j) == Some(&word[1]))
}

impl AttentionControl for SubjectAttention {
    fn wants_probs(&self, layer: &LayerId) -> bool {
        self.state.borrow_mut().seen.push(layer.clone());
        self.layers.selects(layer)
    }

    fn capture(&self, layer: &LayerId, probs: &Tensor) -> persona_diffusion::Result<()> {
        // The loss is computed in f32 whatever the model's precision (the cast keeps the graph).
        self.state
            .borrow_mut()
            .trained
            .push((layer.clone(), upcast(probs)?));
        Ok(())
    }

    fn reference(&self, _layer: &LayerId) -> persona_diffusion::Result<Option<Tensor>> {
        Ok(self.state.borrow().reference.clone())
    }

    fn capture_reference(&self, layer: &LayerId, probs: &Tensor) -> persona_diffusion::Result<()> {
        self.state
            .borrow_mut()
            .referenced
            .push((layer.clone(), upcast(&probs.detach())?));
        Ok(())
    }
}
