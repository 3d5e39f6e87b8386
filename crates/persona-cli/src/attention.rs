//! `persona attention`: where a token looks. Generates one image and writes, for every resolution of the
//! UNet's cross-attention layers, the token's attention map (softmax probabilities of its prompt positions,
//! summed over its tokens, averaged over heads, layers of that resolution and denoising steps) as a heat map
//! over the image — SeFi-IDE's key figure, and the way to check that an identity token attends to the face.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use clap::Args;
use image::{imageops, Rgb, RgbImage};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::{AttentionControl, Condition, LayerId};
use persona_diffusion::pipeline::image::{to_rgb8, write_atomic, write_png};
use persona_diffusion::pipeline::{expand_prompt, GenerateParams, StableDiffusion};
use persona_identity::{AdapterUse, Applied, IdentityControl};

use crate::sampling_flags::{IdentityArgs, ModelArgs, SamplingArgs, SizeArgs};

/// Writes DIR/image.png, DIR/attention_HxW.png per layer resolution (H×W in latent pixels: 64×64 … 8×8 for
/// SD at 512²; 16×16 and 32×32 are the layers SeFi-IDE's loss reads) and DIR/attention.json (the raw maps).
#[derive(Args, Debug)]
#[command(mut_arg("steps", |a| a.default_value("30")))]
#[command(
    after_help = "Example:\n  persona attention --model stabilityai/stable-diffusion-2-1-base --identity alice.safetensors \\\n    \
--prompt 'a photo of {} in a garden' --token '<alice>' --out maps/"
)]
pub struct AttentionArgs {
    #[command(flatten)]
    base: ModelArgs,
    /// The prompt; `{}`/`{0}` and identity names expand as in `persona generate`.
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    ids: IdentityArgs,
    /// Whose attention to show: an identity name (`<alice>`: all its pseudo-tokens) or a word of the prompt.
    #[arg(long)]
    token: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    size: SizeArgs,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: crate::device_flags::DeviceArgs,
}

/// Accumulates, per layer resolution, the token's map of the conditional image (the last batch row).
struct HeatMaps {
    positions: Vec<usize>,
    sums: RefCell<BTreeMap<(usize, usize), (Tensor, usize)>>,
    /// The ID-EA adapters and key/value deltas the identities carry, applied as `persona generate` applies
    /// them, so the maps are those of the image generate draws.
    identities: Option<IdentityControl>,
}

impl AttentionControl for HeatMaps {
    fn condition(
        &self,
        layer: &LayerId,
        condition: &Condition,
    ) -> persona_diffusion::Result<Option<Condition>> {
        match &self.identities {
            Some(c) => c.condition(layer, condition),
            None => Ok(None),
        }
    }

    fn key_value(
        &self,
        layer: &LayerId,
        condition: &Condition,
        key: &Tensor,
        value: &Tensor,
    ) -> persona_diffusion::Result<Option<(Tensor, Tensor)>> {
        match &self.identities {
            Some(c) => c.key_value(layer, condition, key, value),
            None => Ok(None),
        }
    }

    fn wants_probs(&self, _layer: &LayerId) -> bool {
        true
    }

    fn capture(&self, layer: &LayerId, probs: &Tensor) -> persona_diffusion::Result<()> {
        // [B, heads, N, L] → the conditional row, the token's columns summed, heads averaged → [N].
        let row = probs.get(probs.dim(0)? - 1)?;
        let idx = Tensor::new(
            self.positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            row.device(),
        )?;
        let map = row
            .index_select(&idx, D::Minus1)?
            .to_dtype(DType::F32)?
            .sum(D::Minus1)?
            .mean(0)?;
        let mut sums = self.sums.borrow_mut();
        let entry = sums.entry(layer.resolution);
        match entry {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let (sum, count) = e.get_mut();
                *sum = (&*sum + map)?;
                *count += 1;
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((map, 1));
            }
        }
        Ok(())
    }
}

/// Prompt positions of `token`: an identity's pseudo-tokens, or the word's BPE tokens where they occur.
fn positions(
    sd: &StableDiffusion,
    prompt: &str,
    names: &[(String, String)],
    token: &str,
) -> Result<Vec<usize>> {
    let mut tok = sd.tokenizer.clone();
    let added: Vec<String> = names
        .iter()
        .flat_map(|(_, phrase)| phrase.split(' ').map(String::from))
        .collect();
    tok.add_tokens(&added)?;
    let ids = tok.encode(prompt)?;
    let phrase = names
        .iter()
        .find(|(name, _)| name == token)
        .map_or(token, |(_, p)| p.as_str());
    let unpadded = tok.encode_unpadded(phrase)?;
    let want = &unpadded[1..unpadded.len() - 1];
    if want.is_empty() {
        bail!("--token {token:?} gives no tokens");
    }
    let found: Vec<usize> = (0..ids.len().saturating_sub(want.len() - 1))
        .filter(|&i| ids[i..i + want.len()] == *want)
        .collect();
    if found.is_empty() {
        bail!("--token {token:?} does not occur in the prompt {prompt:?}");
    }
    Ok(found.iter().flat_map(|&i| i..i + want.len()).collect())
}

/// A blue → green → red ramp for v in [0, 1].
fn color(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    [
        (2.0 * v - 1.0).clamp(0.0, 1.0),
        1.0 - (2.0 * v - 1.0).abs(),
        (1.0 - 2.0 * v).clamp(0.0, 1.0),
    ]
}

/// The map (normalised to its maximum), coloured, resized to the image and blended with it half and half.
fn overlay(image: &RgbImage, map: &[f32], (h, w): (usize, usize)) -> RgbImage {
    let max = map.iter().cloned().fold(f32::MIN_POSITIVE, f32::max);
    let small = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let c = color(map[y as usize * w + x as usize] / max);
        Rgb(c.map(|c| (c * 255.0).round() as u8))
    });
    let heat = imageops::resize(
        &small,
        image.width(),
        image.height(),
        imageops::FilterType::Triangle,
    );
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let (a, b) = (image.get_pixel(x, y).0, heat.get_pixel(x, y).0);
        Rgb([0, 1, 2].map(|i| ((a[i] as u16 + b[i] as u16) / 2) as u8))
    })
}

pub fn run(a: AttentionArgs) -> Result<()> {
    let s = &a.sampling;
    let place = a.device.resolve()?;
    let sd = StableDiffusion::load(&a.base.model, &place.load_options(a.base.variant.clone()))?;
    place.announce();
    let identities = persona_identity::load(&sd, &a.ids.identity, a.ids.force)?;
    let Applied {
        tokens,
        names,
        control,
    } = Applied::new(&sd, &identities, AdapterUse::Apply, s.guidance > 1.0)?;
    let prompt = expand_prompt(&a.prompt, &names)?;
    let control = HeatMaps {
        positions: positions(&sd, &prompt, &names, &a.token)?,
        sums: RefCell::default(),
        identities: control,
    };
    let (height, width) = a.size.or(sd.default_size());
    let params = GenerateParams {
        prompt: prompt.clone(),
        negative_prompt: expand_prompt(&s.negative_prompt, &names)?,
        steps: s.steps,
        guidance: s.guidance,
        scheduler: s.scheduler,
        height,
        width,
        seed: s.seed,
        num_images: 1,
        batch_size: 1,
        latents: None,
        text_output: Output::Last,
        tokens,
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create the output folder", a.out.display()))?;
    let bar = crate::progress::bar(s.steps as u64, "denoising");
    let images = sd.generate_with(&params, Some(&control), &mut |p| {
        bar.set_position(p.step as u64)
    })?;
    bar.finish_and_clear();
    let image = to_rgb8(&images)?.remove(0);
    let record = serde_json::json!({"model": a.base.model, "prompt": a.prompt, "expanded": prompt, "token": a.token, "positions": control.positions, "steps": s.steps, "seed": s.seed, "device": place.device_name(), "dtype": place.dtype_name()});
    write_png(
        &a.out.join("image.png"),
        &image,
        &[("persona", record.to_string())],
    )?;
    let rgb = RgbImage::from_raw(image.width as u32, image.height as u32, image.data)
        .context("image buffer")?;
    let mut maps = serde_json::Map::new();
    for (&(h, w), (sum, count)) in control.sums.borrow().iter() {
        let map: Vec<f32> = (sum / *count as f64)?.to_vec1()?;
        let path = a.out.join(format!("attention_{h}x{w}.png"));
        overlay(&rgb, &map, (h, w))
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        maps.insert(
            format!("{h}x{w}"),
            serde_json::json!({"captures": count, "map": map}),
        );
    }
    let json = serde_json::json!({"record": record, "maps": maps});
    write_atomic(
        &a.out.join("attention.json"),
        serde_json::to_string(&json)?.as_bytes(),
    )?;
    eprintln!(
        "wrote {} heat map(s) and the image to {}",
        maps.len(),
        a.out.display()
    );
    Ok(())
}
