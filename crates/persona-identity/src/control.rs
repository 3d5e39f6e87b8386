//! ID-EA at inference: the adapters and key/value deltas that identity files carry, as one
//! [`AttentionControl`] for `generate_with`.
//!
//! The adapter adapts the *prompt's* condition only: with classifier-free guidance the UNet batch is
//! `[negative rows; prompt rows]`, and adapting the negative rows too would inject the identity into the
//! branch guidance steers away from. Several identities adapt in turn (in the order given). The adapted
//! condition is computed once per condition tensor and reused by every layer and step. Key/value deltas are
//! weight changes and apply to every row.

use std::cell::RefCell;

use candle_core::{Tensor, TensorId};
use persona_diffusion::nn::{AttentionControl, Condition, LayerId};
use persona_diffusion::pipeline::StableDiffusion;

use crate::adapter::Adapter;
use crate::kv::KvDeltas;
use crate::layers::Source;
use crate::{Identity, IdentityError as Error, Result, FUSED};

/// Whether the adapters run at generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum AdapterUse {
    /// Apply every adapter the identity files carry (the paper's method).
    Apply,
    /// Tokens only, as the released code does at inference (`--adapter train-only`).
    TrainOnly,
}

/// An adapted condition, keyed by the ids of the (key, value) tensors it was made from.
type Cached = ((TensorId, Option<TensorId>), Condition);

pub struct IdentityControl {
    adapters: Vec<(Adapter, Tensor)>,
    kv: Option<KvDeltas>,
    guided: bool,
    cache: RefCell<Vec<Cached>>,
}

impl IdentityControl {
    /// The control for `identities`, or `None` when none carries an adapter or deltas (or `use_` is
    /// train-only). `guided`: the batch is `[negative; prompt]` (guidance scale > 1).
    pub fn new(
        sd: &StableDiffusion,
        identities: &[Identity],
        use_: AdapterUse,
        guided: bool,
    ) -> Result<Option<Self>> {
        if use_ == AdapterUse::TrainOnly {
            return Ok(None);
        }
        let mut adapters = Vec::new();
        let mut kv: Option<KvDeltas> = None;
        for id in identities {
            let named = |e: Error| Error::Invalid(format!("identity {}: {e}", id.token));
            if id.modules.contains_key("adapter.gamma") {
                adapters.push(load_adapter(id).map_err(named)?);
            }
            if let Some(deltas) = KvDeltas::from_modules(sd, &id.modules).map_err(named)? {
                match &mut kv {
                    Some(all) => all.merge(deltas),
                    None => kv = Some(deltas),
                }
            }
        }
        if adapters.is_empty() && kv.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            adapters,
            kv,
            guided,
            cache: RefCell::new(Vec::new()),
        }))
    }

    /// `condition [B, L, d]` with every adapter applied in turn to the prompt rows.
    fn adapt(&self, condition: &Tensor) -> Result<Tensor> {
        let b = condition.dim(0)?;
        let start = if self.guided { b / 2 } else { 0 };
        let mut rows = condition.narrow(0, start, b - start)?;
        for (adapter, fused) in &self.adapters {
            rows = adapter.forward(&rows, fused)?;
        }
        if start == 0 {
            return Ok(rows);
        }
        Ok(Tensor::cat(&[condition.narrow(0, 0, start)?, rows], 0)?)
    }
}

/// An identity's adapter and fused vector; heads and β come from its metadata.
fn load_adapter(id: &Identity) -> Result<(Adapter, Tensor)> {
    let method = &id.meta.hyper["method"];
    let heads = method["heads"]
        .as_u64()
        .ok_or_else(|| Error::Invalid("adapter tensors but no `heads` in the metadata".into()))?;
    let beta = method["beta"]
        .as_f64()
        .ok_or_else(|| Error::Invalid("adapter tensors but no `beta` in the metadata".into()))?;
    let fused = id
        .modules
        .get(FUSED)
        .ok_or_else(|| Error::Invalid(format!("adapter tensors but no `{FUSED}` tensor")))?;
    // The adapter is as wide as the condition: on SDXL both token tables' widths together.
    let width = id.width() + id.rows_2().map_or(Ok(0), |r| r.dim(1))?;
    let adapter = Adapter::new(&mut Source::Saved(&id.modules), width, heads as usize, beta)?;
    Ok((adapter, fused.to_dtype(candle_core::DType::F32)?))
}

impl AttentionControl for IdentityControl {
    fn condition(
        &self,
        _layer: &LayerId,
        condition: &Condition,
    ) -> persona_diffusion::Result<Option<Condition>> {
        if self.adapters.is_empty() {
            return Ok(None);
        }
        let key = (condition.key.id(), condition.value.as_ref().map(Tensor::id));
        if let Some((_, c)) = self.cache.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(Some(c.clone()));
        }
        let adapted = Condition {
            key: self.adapt(&condition.key)?,
            value: condition
                .value
                .as_ref()
                .map(|v| self.adapt(v))
                .transpose()?,
        };
        self.cache.borrow_mut().push((key, adapted.clone()));
        Ok(Some(adapted))
    }

    fn key_value(
        &self,
        layer: &LayerId,
        condition: &Condition,
        key: &Tensor,
        value: &Tensor,
    ) -> persona_diffusion::Result<Option<(Tensor, Tensor)>> {
        match &self.kv {
            Some(kv) => kv.key_value(layer, condition, key, value),
            None => Ok(None),
        }
    }
}
