//! One training step of any method on fixed, seeded inputs: the loss and the gradient of every learned
//! tensor. `persona bench equality` compares two devices with it (CPU against GPU), the tests two precisions
//! (f32 against bf16), so both check exactly what `persona train` computes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use persona_diffusion::pipeline::{seeded_normal, StableDiffusion};
use persona_faces::ModelSearch;
use rand::SeedableRng;

use crate::captions::Captions;
use crate::data::Sample;
use crate::methods::idea::{Idea, IdeaConfig};
use crate::methods::{InitOptions, Method};
use crate::recipe::{build, MethodName, MethodOptions, Recipe};
use crate::trainer::{StepInputs, Trainer};
use crate::{Error, Result};

/// The method as `persona train` builds it with default options; ID-EA on a seeded synthetic face
/// embedding (no face models needed) and without its Mahalanobis regulariser: at the first step the learned
/// rows sit on the anchor, where that distance's gradient is set by its floor, so two devices' anchors that
/// differ in the 7th digit give first-step gradients far apart — a comparison of rounding, not of the model.
/// The regulariser is f32 arithmetic on the learned rows alone, the same on every device.
pub fn method<'a>(sd: &StableDiffusion, name: MethodName) -> Result<Box<dyn Method + 'a>> {
    let token = "<probe>";
    if name == MethodName::Idea {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let face = seeded_normal(&mut rng, &[512], &Device::Cpu)?;
        let face = (&face / f64::from(face.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?))?
            .to_device(&sd.device)?;
        let init = InitOptions {
            num_tokens: 2,
            init_words: None,
            names: None,
        };
        return Ok(Box::new(Idea::new(
            sd,
            token,
            IdeaConfig {
                reg_weight: 0.0,
                ..IdeaConfig::new(init, 0)
            },
            face,
            "synthetic",
        )?));
    }
    let recipe = Recipe {
        method: name,
        token: token.into(),
        images: "none".into(),
        options: MethodOptions::default(),
        faces: ModelSearch::default(),
        face_crop: false,
        templates: None,
        subject: None,
    };
    let built = build(sd, &recipe, sd.default_size() as u32, 0)
        .map_err(|e| Error::Msg(format!("{e:#}")))?;
    Ok(built.method)
}

/// Gives `to` the values and anchors of `from` (initialisers may draw, and anchors are computed, on the
/// device), with ID-EA's gate opened so that its Enhancer and Adapter get gradients too.
pub fn align(from: &dyn Method, to: &mut dyn Method) -> Result<()> {
    let targets: HashMap<String, Var> = to.vars().into_iter().collect();
    for (name, var) in from.vars() {
        if name == "adapter.gamma" {
            var.set(&Tensor::full(0.5f32, var.shape(), var.device())?)?;
        }
        let target = targets
            .get(&name)
            .ok_or_else(|| Error::Msg(format!("{name} exists in one method only")))?;
        target.set(&var.as_tensor().to_device(target.device())?)?;
    }
    for (name, value) in from.extra_tensors() {
        to.set_extra_tensor(&name, &value)?;
    }
    Ok(())
}

/// Two samples at timesteps 100 and 700 with seeded latents and noise (on the CPU) and two of the default
/// captions.
pub fn inputs(sd: &StableDiffusion, m: &dyn Method, name: MethodName) -> Result<StepInputs> {
    let h = sd.default_size() / sd.vae_scale();
    let c = sd.unet.config().in_channels;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let latents = seeded_normal(&mut rng, &[2, c, h, h], &Device::Cpu)?;
    let noise = seeded_normal(&mut rng, &[2, c, h, h], &Device::Cpu)?;
    let captions = Captions::new(None, name.default_subject())?;
    let phrase = m.phrase();
    Ok(StepInputs {
        latents,
        noise,
        timesteps: vec![100, 700],
        captions: vec![captions.caption(0, &phrase), captions.caption(1, &phrase)],
        time_ids: Vec::new(),
    })
}

/// The gradient of each of a method's tensors (`None`: it got none).
pub type Grads = Vec<(String, Option<Tensor>)>;

/// The loss of `inputs` (moved to `sd`'s device) and the gradient of each of the method's tensors.
pub fn loss_and_grads<'a>(
    sd: &'a StableDiffusion,
    m: Box<dyn Method + 'a>,
    inputs: &StepInputs,
    name: MethodName,
) -> Result<(Tensor, Grads)> {
    let side = sd.default_size();
    let pixels = Tensor::zeros((3, side, side), DType::F32, &sd.device)?;
    let dummy = Sample::from_pixels(pixels)?;
    let trainer = Trainer::new(
        sd,
        m,
        vec![dummy],
        Captions::new(None, name.default_subject())?,
        0,
    )?;
    let inputs = StepInputs {
        latents: inputs.latents.to_device(&sd.device)?,
        noise: inputs.noise.to_device(&sd.device)?,
        timesteps: inputs.timesteps.clone(),
        captions: inputs.captions.clone(),
        time_ids: inputs.time_ids.clone(),
    };
    let (total, _, _) = trainer.loss(&inputs)?;
    let grads = total.backward()?;
    let g = trainer
        .method
        .vars()
        .into_iter()
        .map(|(n, v)| (n, grads.get(v.as_tensor()).cloned()))
        .collect();
    Ok((total, g))
}
