//! One Textual Inversion / Cross Initialization step against the PyTorch reference
//! (`tools/fixtures/train_step.py`): anchor vectors, loss, gradient on the placeholder rows, rows after AdamW.

use candle_core::{Tensor, Var};
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};
use persona_train::captions::Captions;
use persona_train::data::Sample;
use persona_train::methods::{anchor, MethodKind, TokenMethod};
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

#[test]
fn cross_init_anchor_matches_reference() {
    let sd = sd();
    let r = load_reference("reference/train/crossinit_init.safetensors").unwrap();
    let names = anchor::read_names(None).unwrap();
    assert_eq!(names.len(), 691);
    let (m, counts) = anchor::column_means(&sd, &names, 2).unwrap();
    assert_eq!(counts, vec![691, 680]);
    check("column means", &m, &r["m"]);
    check(
        "anchor",
        &anchor::cross_init_anchor(&sd, &names, 2).unwrap(),
        &r["init"],
    );
}

#[derive(serde::Deserialize)]
struct Case {
    captions: Vec<String>,
    timesteps: Vec<usize>,
}

#[test]
fn one_step_matches_pytorch() {
    let sd = sd();
    let r = load_reference("reference/train/sd2-tiny_step.safetensors").unwrap();
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("reference/train/sd2-tiny_step.json"))
            .unwrap(),
    )
    .unwrap();
    let inputs = StepInputs {
        latents: r["latents"].clone(),
        noise: r["noise"].clone(),
        timesteps: case.timesteps.clone(),
        captions: case.captions.clone(),
        time_ids: Vec::new(),
    };
    for (kind, reg) in [(MethodKind::CrossInit, 0.01), (MethodKind::Ti, 0.0)] {
        let p = kind.name();
        let before = r[&format!("{p}.rows_before")].clone();
        let init = if kind == MethodKind::CrossInit {
            r["cross-init.init"].clone()
        } else {
            before.clone()
        };
        let method = TokenMethod {
            kind,
            names: vec!["<id>_v0".into(), "<id>_v1".into()],
            rows: Var::from_tensor(&before).unwrap(),
            init,
            rows_2: None,
            init_2: None,
            reg_weight: reg,
        };
        let dummy = Sample {
            path: "none".into(),
            pixels: [
                Tensor::zeros((3, 32, 32), candle_core::DType::F32, &sd.device).unwrap(),
                Tensor::zeros((3, 32, 32), candle_core::DType::F32, &sd.device).unwrap(),
            ],
            face_found: false,
            original_size: (32, 32),
            crop: (0, 0, 32),
        };
        let rows = method.rows.clone();
        let trainer = Trainer::new(
            &sd,
            Box::new(method),
            vec![dummy],
            Captions::new(None, "face of {tokens} person").unwrap(),
            0,
        )
        .unwrap();
        let (total, diffusion, _) = trainer.loss(&inputs).unwrap();
        check(
            &format!("{p} loss"),
            &total.reshape(1).unwrap(),
            &r[&format!("{p}.loss")],
        );
        check(
            &format!("{p} diffusion loss"),
            &diffusion.reshape(1).unwrap(),
            &r[&format!("{p}.loss_diffusion")],
        );
        let grads = total.backward().unwrap();
        check(
            &format!("{p} grad rows"),
            grads.get(rows.as_tensor()).unwrap(),
            &r[&format!("{p}.grad_rows")],
        );
        let mut opt = AdamW::new(
            trainer.method.vars(),
            AdamWConfig {
                lr: 0.005,
                eps: 1e-8,
                ..Default::default()
            },
        )
        .unwrap();
        trainer
            .step(&mut opt, std::slice::from_ref(&inputs), 0.005)
            .unwrap();
        check(
            &format!("{p} rows after AdamW"),
            rows.as_tensor(),
            &r[&format!("{p}.rows_after")],
        );
    }
}
