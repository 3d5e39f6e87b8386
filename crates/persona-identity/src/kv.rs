//! `--train-cross-attn-kv`: low-rank deltas on every cross-attention `to_k`/`to_v` of the UNet (the paper's
//! "adjusting the cross-attention module"; the released code marks those weights trainable but never
//! optimises them). Each layer gets `k' = k + c·Aᵀ·Bᵀ` (and the same for v) with `A [r, d_cond]` initialised
//! like a linear layer and `B [inner, r]` zero, so training starts from the frozen model (LoRA's scheme).
//! Applied through [`AttentionControl::key_value`], to every row of the batch (it is a weight change).

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use persona_diffusion::models::unet::AddedCond;
use persona_diffusion::models::UNet2DConditionModel;
use persona_diffusion::nn::{AttentionControl, Condition, LayerId};
use persona_diffusion::pipeline::StableDiffusion;

use crate::layers::Source;
use crate::{IdentityError as Error, Result};

/// Default rank of the deltas.
pub const RANK: usize = 4;

/// One projection's delta: `A [r, in]`, `B [out, r]`.
#[derive(Clone, Debug)]
struct Delta {
    down: Tensor,
    up: Tensor,
}

impl Delta {
    fn apply(&self, base: &Tensor, input: &Tensor) -> Result<Tensor> {
        let (b, l, c) = input.dims3()?;
        let x = input
            .reshape((b * l, c))?
            .matmul(&self.down.t()?)?
            .matmul(&self.up.t()?)?;
        // The delta is learned in f32; the frozen keys/values may be half precision.
        Ok((base + x.reshape((b, l, ()))?.to_dtype(base.dtype())?)?)
    }
}

/// The deltas of every cross-attention layer, by layer name (`…attn2`); several identities stack theirs.
#[derive(Clone, Debug, Default)]
pub struct KvDeltas {
    layers: BTreeMap<String, Vec<(Delta, Delta)>>,
}

/// Records `(name, condition width, key width)` of every cross-attention layer during one UNet forward.
#[derive(Default)]
struct LayerRecorder(Mutex<Vec<(String, usize, usize)>>);

impl AttentionControl for LayerRecorder {
    fn key_value(
        &self,
        layer: &LayerId,
        condition: &Condition,
        key: &Tensor,
        _value: &Tensor,
    ) -> persona_diffusion::Result<Option<(Tensor, Tensor)>> {
        let entry = (layer.name.clone(), condition.key.dim(2)?, key.dim(2)?);
        self.0
            .lock()
            .map_err(|_| Error::Invalid("layer recorder poisoned".into()))?
            .push(entry);
        Ok(None)
    }
}

/// Every cross-attention layer of the UNet with its condition and key widths, found by one forward on the
/// smallest latent the UNet takes (the layers are defined by the model, so this cannot drift from it).
pub fn cross_attention_layers(sd: &StableDiffusion) -> Result<Vec<(String, usize, usize)>> {
    unet_cross_attention_layers(&sd.unet, &sd.device)
}

/// [`cross_attention_layers`] of a bare UNet (benchmarks on random weights).
pub fn unet_cross_attention_layers(
    unet: &UNet2DConditionModel,
    device: &Device,
) -> Result<Vec<(String, usize, usize)>> {
    let cfg = unet.config();
    let side = 1usize << (cfg.block_out_channels.len() - 1);
    let latents = Tensor::zeros((1, cfg.in_channels, side, side), DType::F32, device)?;
    let cond = Tensor::zeros((1, 1, cfg.cross_attention_dim), DType::F32, device)?;
    let t = Tensor::new(&[0f32], device)?;
    let recorder = LayerRecorder::default();
    // SDXL's UNet also takes pooled text embeddings and time ids; zeros serve to walk its layers.
    let added = unet
        .added_text_dim()
        .map(|dim| -> Result<AddedCond> {
            Ok(AddedCond {
                text_embeds: Tensor::zeros((1, dim), DType::F32, device)?,
                time_ids: Tensor::zeros((1, 6), DType::F32, device)?,
            })
        })
        .transpose()?;
    unet.forward_added(
        &latents,
        &t,
        &Condition::new(cond),
        added.as_ref(),
        Some(&recorder),
    )?;
    let layers = recorder
        .0
        .into_inner()
        .map_err(|_| Error::Invalid("layer recorder poisoned".into()))?;
    if layers.is_empty() {
        return Err(Error::Invalid(
            "the UNet has no cross-attention layer to adjust".into(),
        ));
    }
    Ok(layers)
}

impl KvDeltas {
    /// Deltas for `layers` (from [`cross_attention_layers`]) under `kv.<layer>.to_k.lora_A` / `lora_B` and
    /// `to_v`.
    pub fn new(src: &mut Source, layers: &[(String, usize, usize)], rank: usize) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (name, cond_dim, inner) in layers {
            let mut delta = |proj: &str| -> Result<Delta> {
                let prefix = format!("kv.{name}.{proj}");
                let down = src.uniform(
                    &format!("{prefix}.lora_A"),
                    &[rank, *cond_dim],
                    1.0 / (*cond_dim as f64).sqrt(),
                )?;
                Ok(Delta {
                    down,
                    up: src.zeros(&format!("{prefix}.lora_B"), &[*inner, rank])?,
                })
            };
            out.insert(name.clone(), vec![(delta("to_k")?, delta("to_v")?)]);
        }
        Ok(Self { layers: out })
    }

    /// The deltas stored in an identity file's modules (`kv.…`), if any; `sd`'s layers must all be there.
    pub fn from_modules(
        sd: &StableDiffusion,
        modules: &BTreeMap<String, Tensor>,
    ) -> Result<Option<Self>> {
        if !modules.keys().any(|k| k.starts_with("kv.")) {
            return Ok(None);
        }
        let layers = cross_attention_layers(sd)?;
        let rank = modules
            .iter()
            .find(|(k, _)| k.starts_with("kv.") && k.ends_with(".lora_A"))
            .map(|(_, t)| t.dim(0))
            .transpose()?
            .ok_or_else(|| Error::Invalid("kv deltas without a lora_A tensor".into()))?;
        Ok(Some(Self::new(&mut Source::Saved(modules), &layers, rank)?))
    }

    /// Adds `other`'s deltas (several identities at inference).
    pub fn merge(&mut self, other: KvDeltas) {
        for (name, deltas) in other.layers {
            self.layers.entry(name).or_default().extend(deltas);
        }
    }
}

impl AttentionControl for KvDeltas {
    fn key_value(
        &self,
        layer: &LayerId,
        condition: &Condition,
        key: &Tensor,
        value: &Tensor,
    ) -> persona_diffusion::Result<Option<(Tensor, Tensor)>> {
        let Some(deltas) = self.layers.get(&layer.name) else {
            return Ok(None);
        };
        let (mut k, mut v) = (key.clone(), value.clone());
        for (dk, dv) in deltas {
            k = dk.apply(&k, &condition.key)?;
            v = dv.apply(&v, condition.value())?;
        }
        Ok(Some((k, v)))
    }
}
