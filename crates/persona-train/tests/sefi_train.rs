//! SeFi-IDE on the tiny pipeline: the attention loss falls over a 50-step run on real face photos, each stage
//! receives gradients only at its own timesteps, per-stage identities sample with every scheduler (and equal
//! stages reproduce a plain identity exactly), and the ProSpect-style generator's gradients are exact.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use persona_diffusion::pipeline::{
    stage_of, GenerateParams, LearnedTokens, LoadOptions, StableDiffusion,
};
use persona_diffusion::schedulers::SchedulerKind;
use persona_diffusion::testing::fixtures_dir;
use persona_train::captions::Captions;
use persona_train::data::load_folder;
use persona_train::methods::sefi::{
    Generator, LayerSelect, Parameterisation, SefiMethod, SefiOptions,
};
use persona_train::methods::Method;
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::trainer::{Plan, StepInputs, TrainConfig, Trainer};

fn sd() -> StableDiffusion {
    StableDiffusion::load(
        fixtures_dir().join("sd2-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn options(attn_weight: f64, init_word: Option<&str>) -> SefiOptions {
    SefiOptions {
        stages: 5,
        num_tokens: 1,
        init_word: init_word.map(String::from),
        class_word: "person".into(),
        attn_weight,
        layers: LayerSelect::parse("all", 16).unwrap(),
        parameterisation: Parameterisation::Direct,
        seed: 0,
    }
}

fn faces_dir() -> PathBuf {
    fixtures_dir().join("../../shared/data/faces/celeba")
}

/// The attention loss (unweighted) of the current vectors on a fixed batch covering every stage.
fn attention_loss(trainer: &Trainer, eval: &[StepInputs], weight: f64) -> f64 {
    eval.iter()
        .map(|inputs| {
            trainer
                .loss(inputs)
                .unwrap()
                .2
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
                / weight
        })
        .sum::<f64>()
        / eval.len() as f64
}

#[test]
fn attention_loss_falls_over_50_steps() {
    let src = faces_dir();
    if !src.is_dir() {
        assert!(
            std::env::var("CI").is_err(),
            "{} is missing: CI must have shared/ beside the checkout",
            src.display()
        );
        eprintln!("skipping: {} not found", src.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["00000.jpg", "00001.jpg"] {
        std::fs::copy(src.join(name), photos.join(name)).unwrap();
    }
    let sd = sd();
    let samples = load_folder(&photos, 32, None, &sd.device).unwrap();
    // Start away from the class word ("car"), so the pseudo-token's maps differ from "person"'s at step 0.
    // The tiny random model's maps are nearly uniform (loss ~1e-6), so λ must be large for the term to steer.
    let weight = 1e5;
    let method = SefiMethod::new(&sd, "<alice>", &options(weight, Some("car"))).unwrap();
    let captions = Captions::new(None, "face of {tokens}").unwrap();
    let mut trainer = Trainer::new(&sd, Box::new(method), samples, captions, 11).unwrap();
    let mut eval: Vec<StepInputs> = (0..5)
        .map(|m| {
            trainer
                .draw(
                    10_000,
                    m,
                    &Plan {
                        batch: 1,
                        accum: 1,
                        repeats: 1,
                    },
                )
                .unwrap()
        })
        .collect();
    for (s, inputs) in eval.iter_mut().enumerate() {
        inputs.timesteps = vec![200 * s + 100];
    }
    let cfg = TrainConfig {
        steps: 50,
        batch_size: 1,
        grad_accum: 1,
        lr: 0.005,
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig::default(),
        seed: 11,
        save_every: 0,
        resolution: 32,
        repeats: 100,
        out: tmp.path().join("alice.safetensors"),
    };
    let before = attention_loss(&trainer, &eval, weight);
    let mut opt = AdamW::new(trainer.method.vars(), cfg.adam).unwrap();
    trainer.run(&cfg, &mut opt, 0, &mut |_| {}).unwrap();
    let after = attention_loss(&trainer, &eval, weight);
    eprintln!("attention loss on the evaluation batch: {before:.4e} → {after:.4e}");
    assert!(
        before > 0.0 && after < 0.5 * before,
        "attention loss {before:.4e} → {after:.4e}"
    );
}

#[test]
fn each_stage_gets_gradients_only_at_its_own_timesteps() {
    assert_eq!(
        (
            stage_of(199.0, 5, 1000),
            stage_of(200.0, 5, 1000),
            stage_of(999.0, 5, 1000),
            stage_of(1000.0, 5, 1000)
        ),
        (0, 1, 4, 4)
    );
    let sd = sd();
    let method = SefiMethod::new(&sd, "<alice>", &options(0.003, Some("car"))).unwrap();
    let vars = method.vars();
    let caption = "a photo of a face of <alice>_v0";
    let latents = Tensor::randn(0f32, 1.0, (1, 4, 16, 16), &sd.device).unwrap();
    let noise = Tensor::randn(0f32, 1.0, (1, 4, 16, 16), &sd.device).unwrap();
    let zeros = Tensor::zeros((3, 32, 32), DType::F32, &sd.device).unwrap();
    let dummy = persona_train::data::Sample {
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
    for t in [0, 150, 199, 200, 450, 600, 799, 800, 999] {
        let inputs = StepInputs {
            latents: latents.clone(),
            noise: noise.clone(),
            timesteps: vec![t],
            captions: vec![caption.into()],
            time_ids: Vec::new(),
        };
        let grads = trainer.loss(&inputs).unwrap().0.backward().unwrap();
        for (name, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap();
            for s in 0..5 {
                let norm = g
                    .get(s)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(
                    norm > 0.0,
                    s == t / 200,
                    "{name}: t = {t}, stage {s} has gradient norm² {norm}"
                );
            }
        }
    }
}

fn params(tokens: Vec<LearnedTokens>, prompt: &str, scheduler: &str) -> GenerateParams {
    GenerateParams {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        steps: 5,
        guidance: 3.0,
        scheduler: Some(scheduler.parse::<SchedulerKind>().unwrap()),
        height: 32,
        width: 32,
        seed: 4,
        num_images: 1,
        batch_size: 1,
        latents: None,
        text_output: persona_diffusion::models::clip_text::Output::Last,
        tokens,
    }
}

#[test]
fn staged_identities_sample_with_every_scheduler() {
    let sd = sd();
    let d = 32;
    let rows = Tensor::randn(0f32, 1.0, (1, d), &Device::Cpu).unwrap();
    let same = rows.unsqueeze(0).unwrap().repeat((5, 1, 1)).unwrap();
    let equal_stages = LearnedTokens::staged(vec!["<s>_v0".into()], &same, &same).unwrap();
    let plain = LearnedTokens {
        names: vec!["<s>_v0".into()],
        rows,
        rows_2: None,
    };
    let keys = Tensor::randn(0f32, 1.0, (5, 1, d), &Device::Cpu).unwrap();
    let values = Tensor::randn(0f32, 1.0, (5, 1, d), &Device::Cpu).unwrap();
    let staged = LearnedTokens::staged(vec!["<s>_v0".into()], &keys, &values).unwrap();
    let other = LearnedTokens {
        names: vec!["<t>_v0".into()],
        rows: Tensor::randn(0f32, 1.0, (1, d), &Device::Cpu).unwrap(),
        rows_2: None,
    };
    for scheduler in SchedulerKind::cli_names() {
        // Equal stages with keys = values are a plain identity: the same image, bit for bit.
        let a = sd
            .generate(
                &params(vec![plain.clone()], "a photo of <s>_v0", scheduler),
                &mut |_| {},
            )
            .unwrap();
        let b = sd
            .generate(
                &params(vec![equal_stages.clone()], "a photo of <s>_v0", scheduler),
                &mut |_| {},
            )
            .unwrap();
        let diff = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{scheduler}");
        // Distinct stages change the image; a staged and a plain identity share a prompt.
        let c = sd
            .generate(
                &params(
                    vec![staged.clone(), other.clone()],
                    "<s>_v0 and <t>_v0",
                    scheduler,
                ),
                &mut |_| {},
            )
            .unwrap();
        let d = sd
            .generate(
                &params(
                    vec![plain.clone(), other.clone()],
                    "<s>_v0 and <t>_v0",
                    scheduler,
                ),
                &mut |_| {},
            )
            .unwrap();
        assert!(
            (&c - &d)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0,
            "{scheduler}"
        );
    }
}

/// The generator's gradients (candle autograd through the written-out layer norm and `nn::grad`'s softmax)
/// against central finite differences in f64.
#[test]
fn generator_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let init = Tensor::randn(0f64, 1.0, (2, 8), &dev).unwrap();
    let g = Generator::new(&init, 3, 5).unwrap();
    // Move every variable off its initial value (the output projection starts at zero, which hides the rest).
    for (_, v) in g.vars() {
        v.set(&(v.as_tensor() + Tensor::randn(0f64, 0.3, v.shape(), &dev).unwrap()).unwrap())
            .unwrap();
    }
    let wk = Tensor::randn(0f64, 1.0, (3, 2, 8), &dev).unwrap();
    let wv = Tensor::randn(0f64, 1.0, (3, 2, 8), &dev).unwrap();
    let objective = |g: &Generator| -> Tensor {
        let (k, v) = g.forward().unwrap();
        ((k * &wk).unwrap().sum_all().unwrap() + (v * &wv).unwrap().sum_all().unwrap()).unwrap()
    };
    let grads = objective(&g).backward().unwrap();
    for (name, var) in g.vars() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in (0..base.len()).step_by((base.len() / 5).max(1)) {
            let at = |delta: f64| -> f64 {
                let mut x = base.clone();
                x[i] += delta;
                var.set(&Tensor::from_vec(x, var.shape(), &dev).unwrap())
                    .unwrap();
                objective(&g).to_scalar::<f64>().unwrap()
            };
            let h = 1e-5;
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap())
                .unwrap();
            // f64 central differences: truncation error O(h²·f''') ≈ 1e-9 here, i.e. 1e-6 relative to the
            // 1e-3 floor, so 1e-5 leaves room for the random draw; a wrong gradient is off by orders more.
            let err = (grad[i] - numeric).abs() / numeric.abs().max(1e-3);
            assert!(
                err < 1e-5,
                "{name}[{i}]: autograd {} vs finite difference {numeric} (error {err:.2e})",
                grad[i]
            );
        }
    }
}
