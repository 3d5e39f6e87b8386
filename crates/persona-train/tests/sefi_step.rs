//! One SeFi-IDE step against our PyTorch reconstruction (`tools/fixtures/sefi_step.py`): K/V-split encodings,
//! the UNet forward with keys and values from different encodings, captured attention maps (caption and
//! reference, same queries), the subject-wise attention loss, and the gradients of the per-stage K and V
//! embeddings — all within 1e-4 relative.

use std::cell::RefCell;

use candle_core::{DType, Tensor};
use persona_diffusion::nn::{AttentionControl, LayerId};
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_diffusion::schedulers::NoiseSchedule;
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};
use persona_train::captions::Captions;
use persona_train::data::Sample;
use persona_train::methods::sefi::{LayerSelect, Parameterisation, SefiMethod, SefiOptions};
use persona_train::methods::Method;
use persona_train::trainer::{StepInputs, Trainer};

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let err = rel_error(got, want).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{name}: relative error {err:.2e}");
}

#[derive(serde::Deserialize)]
struct Case {
    captions: Vec<String>,
    references: Vec<String>,
    timesteps: Vec<usize>,
    stages: usize,
    attn_weight: f64,
}

/// Records every cross-attention layer's probabilities for the condition and for a reference condition.
struct Recorder {
    reference: Tensor,
    maps: RefCell<Vec<(String, Tensor)>>,
}

impl AttentionControl for Recorder {
    fn wants_probs(&self, _layer: &LayerId) -> bool {
        true
    }
    fn capture(&self, layer: &LayerId, probs: &Tensor) -> persona_diffusion::Result<()> {
        self.maps
            .borrow_mut()
            .push((format!("probs.{}", layer.name), probs.clone()));
        Ok(())
    }
    fn reference(&self, _layer: &LayerId) -> persona_diffusion::Result<Option<Tensor>> {
        Ok(Some(self.reference.clone()))
    }
    fn capture_reference(&self, layer: &LayerId, probs: &Tensor) -> persona_diffusion::Result<()> {
        self.maps
            .borrow_mut()
            .push((format!("probs_reference.{}", layer.name), probs.clone()));
        Ok(())
    }
}

#[test]
fn one_sefi_step_matches_pytorch() {
    let sd = StableDiffusion::load(
        fixtures_dir().join("sd2-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let r = load_reference("reference/sefi/sd2-tiny_step.safetensors").unwrap();
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("reference/sefi/sd2-tiny_step.json")).unwrap(),
    )
    .unwrap();
    let options = SefiOptions {
        stages: case.stages,
        num_tokens: 2,
        init_word: None,
        class_word: "person".into(),
        attn_weight: case.attn_weight,
        layers: LayerSelect::parse("all", 16).unwrap(),
        parameterisation: Parameterisation::Direct,
        seed: 0,
    };
    let method = SefiMethod::new(&sd, "<id>", &options).unwrap();
    let vars = method.vars();
    vars[0].1.set(&r["keys"]).unwrap();
    vars[1].1.set(&r["values"]).unwrap();
    let captions: Vec<&str> = case.captions.iter().map(String::as_str).collect();

    // K/V-split encodings, per-sample stage.
    let cond = method.condition(&sd, &captions, &case.timesteps).unwrap();
    check("key encoding", &cond.key, &r["cond_key"]);
    check("value encoding", cond.value(), &r["cond_value"]);

    // Forward with every map captured, against the reference prompts.
    let refs: Vec<&str> = case.references.iter().map(String::as_str).collect();
    let reference = sd
        .encode_prompts(&refs, persona_diffusion::models::clip_text::Output::Last)
        .unwrap();
    check("reference encoding", &reference, &r["cond_reference"]);
    let noise_schedule = NoiseSchedule::from_config(&sd.scheduler_config).unwrap();
    let noisy = noise_schedule
        .add_noise(&r["latents"], &r["noise"], &case.timesteps)
        .unwrap();
    let t = Tensor::new(
        case.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(),
        &sd.device,
    )
    .unwrap();
    let recorder = Recorder {
        reference,
        maps: RefCell::default(),
    };
    let pred = sd.unet.forward(&noisy, &t, &cond, Some(&recorder)).unwrap();
    check("prediction", &pred, &r["pred"]);
    let maps = recorder.maps.borrow();
    assert_eq!(
        maps.len(),
        12,
        "6 cross-attention layers, each with its reference"
    );
    let mut compared = 0;
    for (name, probs) in maps.iter() {
        if let Some(want) = r.get(name) {
            check(name, probs, want);
            compared += 1;
        }
    }
    assert_eq!(compared, 4);

    // The attention loss alone and its gradients.
    method.condition(&sd, &captions, &case.timesteps).unwrap();
    sd.unet
        .forward(&noisy, &t, &cond, method.control())
        .unwrap();
    let attn = method.attention().unwrap().unweighted().unwrap();
    check("attention loss", &attn.reshape(1).unwrap(), &r["loss_attn"]);
    let grads = attn.backward().unwrap();
    check(
        "d attn / d keys",
        grads.get(vars[0].1.as_tensor()).unwrap(),
        &r["grad_keys_attn"],
    );
    check(
        "d attn / d values",
        grads.get(vars[1].1.as_tensor()).unwrap(),
        &r["grad_values_attn"],
    );

    // The whole step through the training loop's loss.
    let zeros = Tensor::zeros((3, 32, 32), DType::F32, &sd.device).unwrap();
    let dummy = Sample {
        path: "none".into(),
        pixels: [zeros.clone(), zeros],
        face_found: false,
        original_size: (32, 32),
        crop: (0, 0, 32),
    };
    let trainer = Trainer::new(
        &sd,
        Box::new(method),
        vec![dummy],
        Captions::new(None, "face of {tokens}").unwrap(),
        0,
    )
    .unwrap();
    let inputs = StepInputs {
        latents: r["latents"].clone(),
        noise: r["noise"].clone(),
        timesteps: case.timesteps.clone(),
        captions: case.captions.clone(),
        time_ids: Vec::new(),
    };
    let (total, diffusion, extra) = trainer.loss(&inputs).unwrap();
    check("loss", &total.reshape(1).unwrap(), &r["loss"]);
    check(
        "diffusion loss",
        &diffusion.reshape(1).unwrap(),
        &r["loss_diffusion"],
    );
    check(
        "λ · attention loss",
        &extra.unwrap().reshape(1).unwrap(),
        &(&r["loss_attn"] * case.attn_weight).unwrap(),
    );
    let grads = total.backward().unwrap();
    let (gk, gv) = (
        grads.get(vars[0].1.as_tensor()).unwrap(),
        grads.get(vars[1].1.as_tensor()).unwrap(),
    );
    check("d loss / d keys", gk, &r["grad_keys"]);
    check("d loss / d values", gv, &r["grad_values"]);
    // Stages 1–3 had no sample: exactly zero gradient.
    for s in 1..4 {
        assert_eq!(
            gk.get(s)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert_eq!(
            gv.get(s)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
