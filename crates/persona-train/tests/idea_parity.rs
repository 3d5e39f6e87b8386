//! ID-EA against the PyTorch reference (`tools/fixtures/idea_step.py`): Enhancer and Adapter forwards, one full
//! training step (loss, the gradient of every trainable tensor, every tensor after one AdamW step) with and
//! without the key/value deltas, and the Mahalanobis regulariser. Also: at γ = 0 the adapter is the identity.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};
use persona_identity::adapter::Adapter;
use persona_identity::layers::Source;
use persona_train::captions::Captions;
use persona_train::data::Sample;
use persona_train::methods::idea::enhancer::Enhancer;
use persona_train::methods::idea::{reg, Idea, IdeaConfig};
use persona_train::methods::{InitOptions, Method, MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig};
use persona_train::trainer::{StepInputs, Trainer};

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let err = rel_error(got, want).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{name}: relative error {err:.2e}");
}

fn sd() -> StableDiffusion {
    StableDiffusion::load(
        fixtures_dir().join("sd2-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    load_reference("reference/idea/sd2-tiny_idea.safetensors").unwrap()
}

/// The reference's module parameters under their own names (`enhancer.…`, `adapter.…`, `kv.…`).
fn modules(r: &HashMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    r.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("modules.")
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect()
}

#[test]
fn enhancer_and_adapter_match_pytorch() {
    let r = reference();
    let m = modules(&r);
    let enhancer = Enhancer::new(&mut Source::Saved(&m), 64, 32, 8).unwrap();
    let fused = enhancer.forward(&r["face"], &r["init"]).unwrap();
    check("enhancer fused", &fused, &r["enhancer.fused"]);
    let adapter = Adapter::new(&mut Source::Saved(&m), 32, 8, 0.4).unwrap();
    check(
        "adapter output",
        &adapter
            .forward(&r["adapter.y"], &r["enhancer.fused"])
            .unwrap(),
        &r["adapter.out"],
    );
}

#[derive(serde::Deserialize)]
struct Case {
    captions: Vec<String>,
    timesteps: Vec<usize>,
}

fn dummy_sample(sd: &StableDiffusion) -> Sample {
    let zeros = || Tensor::zeros((3, 32, 32), DType::F32, &sd.device).unwrap();
    Sample {
        path: "none".into(),
        pixels: [zeros(), zeros()],
        face_found: true,
        original_size: (32, 32),
        crop: (0, 0, 32),
    }
}

#[test]
fn one_step_matches_pytorch() {
    let sd = sd();
    let r = reference();
    let m = modules(&r);
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("reference/idea/sd2-tiny_idea.json")).unwrap(),
    )
    .unwrap();
    let noisy_inputs = StepInputs {
        latents: r["latents"].clone(),
        noise: r["noise"].clone(),
        timesteps: case.timesteps,
        captions: case.captions,
        time_ids: Vec::new(),
    };
    for (name, kv_rank) in [("idea", None), ("idea-kv", Some(2))] {
        let names = vec!["<id>_v0".to_string(), "<id>_v1".to_string()];
        let rows = Var::from_tensor(&r[&format!("{name}.rows_before")]).unwrap();
        let tokens = TokenMethod {
            kind: MethodKind::CrossInit,
            names,
            rows,
            init: r["init"].clone(),
            rows_2: None,
            init_2: None,
            reg_weight: 1e-2,
        };
        let config = IdeaConfig {
            kv_rank,
            ..IdeaConfig::new(
                InitOptions {
                    num_tokens: 2,
                    init_words: None,
                    names: None,
                },
                0,
            )
        };
        let method = Idea::with_tokens(&sd, tokens, config, r["face"].clone(), "test").unwrap();
        let vars: Vec<(String, Var)> = method.vars();
        for (n, var) in vars.iter().skip(1) {
            var.set(&m[n]).unwrap();
        }
        let trainer = Trainer::new(
            &sd,
            Box::new(method),
            vec![dummy_sample(&sd)],
            Captions::new(None, "face of {tokens} person").unwrap(),
            0,
        )
        .unwrap();
        let (total, diffusion, _) = trainer.loss(&noisy_inputs).unwrap();
        check(
            &format!("{name} loss"),
            &total.reshape(1).unwrap(),
            &r[&format!("{name}.loss")],
        );
        check(
            &format!("{name} diffusion loss"),
            &diffusion.reshape(1).unwrap(),
            &r[&format!("{name}.loss_diffusion")],
        );
        let grads = total.backward().unwrap();
        let mut worst = 0f64;
        for (n, var) in &vars {
            let err = rel_error(
                grads.get(var.as_tensor()).unwrap(),
                &r[&format!("{name}.grad.{n}")],
            )
            .unwrap();
            assert!(
                err <= 1e-4,
                "{name} gradient of {n}: relative error {err:.2e}"
            );
            worst = worst.max(err);
        }
        eprintln!(
            "{name}: {} trainable tensors, worst gradient relative error {worst:.2e}",
            vars.len()
        );
        let mut opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr: 0.012,
                eps: 1e-7,
                ..Default::default()
            },
        )
        .unwrap();
        trainer
            .step(&mut opt, std::slice::from_ref(&noisy_inputs), 0.012)
            .unwrap();
        let mut worst = 0f64;
        for (n, var) in &vars {
            let err = rel_error(var.as_tensor(), &r[&format!("{name}.after.{n}")]).unwrap();
            assert!(
                err <= 1e-4,
                "{name} {n} after AdamW: relative error {err:.2e}"
            );
            worst = worst.max(err);
        }
        eprintln!("{name}: worst relative error after one AdamW step {worst:.2e}");
    }
}

#[test]
fn mahalanobis_matches_pytorch() {
    let r = reference();
    let precision = reg::precision(&r["init"]).unwrap();
    check("mahalanobis C⁺", &precision, &r["maha.precision"]);
    let rows = Var::from_tensor(&r["maha.rows"]).unwrap();
    let value = reg::mahalanobis(rows.as_tensor(), &r["init"], &precision, 8e-4).unwrap();
    check(
        "mahalanobis value",
        &value.reshape(1).unwrap(),
        &r["maha.reg"],
    );
    let grads = value.backward().unwrap();
    check(
        "mahalanobis gradient",
        grads.get(rows.as_tensor()).unwrap(),
        &r["maha.grad"],
    );
}

#[test]
fn zero_gate_is_the_identity() {
    let sd = sd();
    let r = reference();
    let config = IdeaConfig::new(
        InitOptions {
            num_tokens: 2,
            init_words: None,
            names: None,
        },
        0,
    );
    let method = Idea::new(&sd, "<id>", config, r["face"].clone(), "test").unwrap();
    let captions = ["a photo of a face of <id>_v0 <id>_v1 person"];
    let plain = sd
        .encode_with_tokens(
            &captions,
            &[persona_diffusion::pipeline::LearnedTokens {
                names: vec!["<id>_v0".into(), "<id>_v1".into()],
                rows: method.vars()[0].1.as_tensor().clone(),
                rows_2: None,
            }],
            Output::Last,
        )
        .unwrap();
    let adapted = method.condition(&sd, &captions, &[0]).unwrap();
    assert_eq!(rel_error(&adapted.key, &plain).unwrap(), 0.0);
    assert_eq!(method.gamma().unwrap(), 0.0);
}
