//! ID-EA and SeFi-IDE on SDXL (`fixtures/sdxl-tiny`). Both are built on methods whose SDXL step matches
//! PyTorch (`sdxl_train.rs`), and each starts exactly where that method does: ID-EA's gate is 0, so its first
//! loss and token gradients are Cross Init's; SeFi-IDE's keys and values all start at the init word, so its
//! first loss is Textual Inversion's and its key and value gradients add up to TI's, in both token tables.
//! Then each trains, resumes exactly, and its identity file generates and exports.

use std::path::Path;

use candle_core::{DType, Tensor, Var};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::pipeline::{GenerateParams, LoadOptions, StableDiffusion};
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};
use persona_identity::stages::{KEYS_2, VALUES_2};
use persona_identity::{export_a1111, Identity};
use persona_identity::{learned_tokens, load as load_identities};
use persona_identity::{AdapterUse, IdentityControl};
use persona_train::captions::Captions;
use persona_train::data::Sample;
use persona_train::methods::idea::{Idea, IdeaConfig, FUSED};
use persona_train::methods::sefi::{LayerSelect, Parameterisation, SefiMethod, SefiOptions};
use persona_train::methods::{InitOptions, Method, MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::output::to_identity;
use persona_train::trainer::{StepInputs, TrainConfig, Trainer};

use crate::idea_train::values;

/// The widths of sdxl-tiny's two token tables.
const D1: usize = 32;
const D2: usize = 48;

fn sd() -> StableDiffusion {
    StableDiffusion::load(
        fixtures_dir().join("sdxl-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn close(name: &str, got: &Tensor, want: &Tensor, limit: f64) {
    let err = rel_error(got, want).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= limit, "{name}: relative error {err:.2e}");
}

#[derive(serde::Deserialize)]
struct Case {
    captions: Vec<String>,
    timesteps: Vec<usize>,
    time_ids: Vec<[f32; 6]>,
}

/// The reference SDXL step's batch: two captions at timesteps 37 and 812, each with its photo's time ids.
fn inputs(class_word: &str) -> StepInputs {
    let r = load_reference("reference/train/sdxl-tiny_step.safetensors").unwrap();
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("reference/train/sdxl-tiny_step.json"))
            .unwrap(),
    )
    .unwrap();
    StepInputs {
        latents: r["latents"].clone(),
        noise: r["noise"].clone(),
        timesteps: case.timesteps,
        captions: case
            .captions
            .iter()
            .map(|c| c.replace(" person", &format!(" {class_word}")))
            .collect(),
        time_ids: case.time_ids,
    }
}

fn trainer<'a>(sd: &'a StableDiffusion, method: Box<dyn Method + 'a>) -> Trainer<'a> {
    let pixels = Tensor::zeros((3, 16, 16), DType::F32, &sd.device).unwrap();
    Trainer::new(
        sd,
        method,
        vec![Sample::from_pixels(pixels).unwrap()],
        Captions::new(None, "face of {tokens} man").unwrap(),
        0,
    )
    .unwrap()
}

fn init(words: Option<&str>) -> InitOptions {
    InitOptions {
        num_tokens: 2,
        init_words: words.map(String::from),
        names: None,
    }
}

fn face() -> Tensor {
    let v: Vec<f32> = (0..16).map(|i| ((i * 7 % 5) as f32 - 2.0) / 4.0).collect();
    Tensor::new(v, &candle_core::Device::Cpu).unwrap()
}

fn idea_config(kv_rank: Option<usize>) -> IdeaConfig {
    IdeaConfig {
        kv_rank,
        ..IdeaConfig::new(init(None), 3)
    }
}

fn var(method: &dyn Method, name: &str) -> Var {
    method
        .vars()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .1
}

fn norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn idea_on_sdxl_starts_where_cross_init_does() {
    let sd = sd();
    let inputs = inputs("person");
    let cross = TokenMethod::new(&sd, MethodKind::CrossInit, "<id>", &init(None), 8e-4).unwrap();
    let tokens = TokenMethod::new(&sd, MethodKind::CrossInit, "<id>", &init(None), 8e-4).unwrap();
    let idea = Idea::with_tokens(&sd, tokens, idea_config(None), face(), "test").unwrap();
    // The Enhancer reads both tables' anchors side by side; the Adapter works on the 2048-wide condition
    // (here D1 + D2).
    assert_eq!(idea.fused().unwrap().dims(), [2, 2 * (D1 + D2)]);

    let run = |m: Box<dyn Method>| {
        let t = trainer(&sd, m);
        let (total, _, _) = t.loss(&inputs).unwrap();
        let grads = total.backward().unwrap();
        let g = |name: &str| {
            let vars = t.method.vars();
            let v = vars.iter().find(|(n, _)| n == name)?;
            grads.get(v.1.as_tensor()).cloned()
        };
        (
            total,
            g("embeddings").unwrap(),
            g("sdxl.clip_g").unwrap(),
            g("adapter.gamma"),
        )
    };
    let (loss_c, rows_c, rows2_c, _) = run(Box::new(cross));
    let (loss_i, rows_i, rows2_i, gamma) = run(Box::new(idea));
    close(
        "loss",
        &loss_i.reshape(1).unwrap(),
        &loss_c.reshape(1).unwrap(),
        1e-6,
    );
    close("grad rows (text_encoder)", &rows_i, &rows_c, 1e-5);
    close("grad rows (text_encoder_2)", &rows2_i, &rows2_c, 1e-5);
    let gamma = gamma.expect("the gate gets a gradient");
    assert!(norm(&gamma) > 0.0, "the gate's gradient is 0");
}

#[test]
fn sefi_on_sdxl_starts_where_ti_does() {
    let sd = sd();
    let inputs = inputs("man");
    let ti = TokenMethod::new(&sd, MethodKind::Ti, "<id>", &init(Some("man")), 0.0).unwrap();
    let options = SefiOptions {
        stages: 2,
        num_tokens: 2,
        init_word: None,
        class_word: "man".into(),
        attn_weight: 0.0,
        layers: LayerSelect::parse(LayerSelect::DEFAULT, 2).unwrap(),
        parameterisation: Parameterisation::Direct,
        seed: 1,
    };
    let sefi = SefiMethod::new(&sd, "<id>", &options).unwrap();

    let t = trainer(&sd, Box::new(ti));
    let (loss_ti, _, _) = t.loss(&inputs).unwrap();
    let grads = loss_ti.backward().unwrap();
    let rows = grads
        .get(var(t.method.as_ref(), "embeddings").as_tensor())
        .unwrap()
        .clone();
    let rows_2 = grads
        .get(var(t.method.as_ref(), "sdxl.clip_g").as_tensor())
        .unwrap()
        .clone();

    let t = trainer(&sd, Box::new(sefi));
    let (loss, _, _) = t.loss(&inputs).unwrap();
    let grads = loss.backward().unwrap();
    let g = |name: &str| {
        grads
            .get(var(t.method.as_ref(), name).as_tensor())
            .unwrap()
            .clone()
    };
    let (keys, values) = (g("stages.keys"), g("stages.values"));
    assert_eq!(keys.dims(), [2, 2, D1 + D2]);
    // timesteps 37 and 812: one sample in each of the 2 stages, so every stage's vectors get gradients.
    for s in 0..2 {
        assert!(norm(&keys.get(s).unwrap()) > 0.0 && norm(&values.get(s).unwrap()) > 0.0);
    }
    let total = (keys + values).unwrap().sum(0).unwrap();
    close(
        "loss",
        &loss.reshape(1).unwrap(),
        &loss_ti.reshape(1).unwrap(),
        1e-6,
    );
    close(
        "Σ K+V grads (text_encoder)",
        &total.narrow(1, 0, D1).unwrap(),
        &rows,
        1e-5,
    );
    close(
        "Σ K+V grads (text_encoder_2)",
        &total.narrow(1, D1, D2).unwrap(),
        &rows_2,
        1e-5,
    );
}

#[test]
fn attention_loss_on_sdxl_reads_both_encoders() {
    let sd = sd();
    let inputs = inputs("man");
    let options = |init_word: &str| SefiOptions {
        stages: 2,
        num_tokens: 1,
        init_word: Some(init_word.into()),
        class_word: "man".into(),
        attn_weight: 1.0,
        layers: LayerSelect::parse("all", 2).unwrap(),
        parameterisation: Parameterisation::Direct,
        seed: 1,
    };
    let inputs = StepInputs {
        captions: inputs
            .captions
            .iter()
            .map(|c| c.replace("<id>_v0 <id>_v1", "<id>_v0"))
            .collect(),
        ..inputs
    };
    // Started at the class word, the pseudo-token's maps are the reference's: the loss is 0.
    let t = trainer(
        &sd,
        Box::new(SefiMethod::new(&sd, "<id>", &options("man")).unwrap()),
    );
    let (_, _, extra) = t.loss(&inputs).unwrap();
    let at_class = extra.unwrap().to_scalar::<f32>().unwrap();
    assert!(
        at_class.abs() < 1e-9,
        "attention loss at the class word: {at_class}"
    );
    // Started elsewhere, the loss pulls on both tables' parts of the vectors.
    let t = trainer(
        &sd,
        Box::new(SefiMethod::new(&sd, "<id>", &options("photo")).unwrap()),
    );
    let (_, _, extra) = t.loss(&inputs).unwrap();
    let extra = extra.unwrap();
    let value = extra.to_scalar::<f32>().unwrap();
    assert!(value > 0.0 && value.is_finite(), "attention loss {value}");
    let grads = extra.backward().unwrap();
    let keys = grads
        .get(var(t.method.as_ref(), "stages.keys").as_tensor())
        .unwrap();
    assert!(norm(&keys.narrow(2, 0, D1).unwrap()) > 0.0);
    assert!(norm(&keys.narrow(2, D1, D2).unwrap()) > 0.0);
}

fn config(out: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        grad_accum: 1,
        lr: 0.02,
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig::default(),
        seed: 4,
        save_every: 0,
        resolution: 16,
        repeats: 4,
        out: out.to_path_buf(),
    }
}

fn photo_trainer<'a>(sd: &'a StableDiffusion, method: Box<dyn Method + 'a>) -> Trainer<'a> {
    let samples = (0..3)
        .map(|i| {
            let v: Vec<f32> = (0..3 * 16 * 16)
                .map(|k| ((k * (7 + i) % 23) as f32 / 11.0) - 1.0)
                .collect();
            let pixels = Tensor::from_vec(v, (3, 16, 16), &sd.device).unwrap();
            let mut s = Sample::from_pixels(pixels).unwrap();
            s.original_size = (16 + 8 * i as u32, 16);
            s
        })
        .collect();
    Trainer::new(
        sd,
        method,
        samples,
        Captions::new(None, "face of {tokens} man").unwrap(),
        5,
    )
    .unwrap()
}

/// 4 steps straight, and 2 + a resumed 2 from the checkpoint, end in the same state.
fn trains_and_resumes<'a>(
    sd: &'a StableDiffusion,
    dir: &Path,
    make: &dyn Fn() -> Box<dyn Method + 'a>,
) -> Trainer<'a> {
    let full = config(&dir.join("full.safetensors"), 4);
    let mut t = photo_trainer(sd, make());
    let before = values(&t);
    let mut opt = AdamW::new(t.method.vars(), full.adam).unwrap();
    t.run(&full, &mut opt, 0, &mut |r| {
        assert!(r.loss.total.is_finite())
    })
    .unwrap();
    let after = values(&t);
    assert!(before.iter().zip(&after).all(|(b, a)| b.0 == a.0));
    assert!(before != after, "training changed nothing");

    let split = config(&dir.join("split.safetensors"), 4);
    let short = TrainConfig {
        steps: 2,
        ..split.clone()
    };
    let mut first = photo_trainer(sd, make());
    let mut opt = AdamW::new(first.method.vars(), short.adam).unwrap();
    first.run(&short, &mut opt, 0, &mut |_| {}).unwrap();
    let mut second = photo_trainer(sd, make());
    let mut opt = AdamW::new(second.method.vars(), short.adam).unwrap();
    assert_eq!(second.resume(&short, &mut opt).unwrap(), 2);
    let rest = TrainConfig {
        steps: 4,
        ..short.clone()
    };
    second.run(&rest, &mut opt, 2, &mut |_| {}).unwrap();
    assert_eq!(values(&second), after, "the resumed run differs");
    t
}

fn generate(sd: &StableDiffusion, identity: Option<&Identity>, adapter: AdapterUse) -> Tensor {
    let (tokens, names) = match identity {
        Some(i) => learned_tokens(std::slice::from_ref(i)),
        None => (Vec::new(), Vec::new()),
    };
    let prompt = match identity {
        Some(_) => persona_diffusion::pipeline::expand_prompt("a photo of {} man", &names).unwrap(),
        None => "a photo of a man".into(),
    };
    let params = GenerateParams {
        prompt,
        negative_prompt: String::new(),
        steps: 3,
        guidance: 5.0,
        scheduler: None,
        height: 16,
        width: 16,
        seed: 2,
        num_images: 1,
        batch_size: 1,
        latents: None,
        text_output: Output::Last,
        tokens,
    };
    let ids = identity.map(std::slice::from_ref).unwrap_or_default();
    let control = IdentityControl::new(sd, ids, adapter, true).unwrap();
    let images = sd
        .generate_with(&params, control.as_ref().map(|c| c as _), &mut |_| {})
        .unwrap();
    let sum = images.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(sum.is_finite() && images.max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    images
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Saves and reloads (family and base checks included) the identity of a finished run.
fn round_trip(sd: &StableDiffusion, t: &Trainer, dir: &Path, hyper: serde_json::Value) -> Identity {
    let cfg = config(&dir.join("alice.safetensors"), 4);
    let identity = to_identity(sd, "sdxl-tiny", t.method.as_ref(), &cfg, "<alice>", hyper).unwrap();
    assert!(identity.is_sdxl());
    identity.save(&cfg.out).unwrap();
    let loaded = load_identities(sd, std::slice::from_ref(&cfg.out), false)
        .unwrap()
        .remove(0);
    let a1111 = dir.join("alice-a1111.safetensors");
    export_a1111(&loaded, &a1111).unwrap();
    let bytes = std::fs::read(&a1111).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("clip_l").unwrap().shape(), [2, D1]);
    assert_eq!(st.tensor("clip_g").unwrap().shape(), [2, D2]);
    loaded
}

#[test]
fn idea_on_sdxl_trains_resumes_and_generates() {
    let sd = sd();
    let tmp = tempfile::tempdir().unwrap();
    let make = || -> Box<dyn Method> {
        let tokens =
            TokenMethod::new(&sd, MethodKind::CrossInit, "<alice>", &init(None), 8e-4).unwrap();
        Box::new(Idea::with_tokens(&sd, tokens, idea_config(Some(2)), face(), "test").unwrap())
    };
    let t = trains_and_resumes(&sd, tmp.path(), &make);
    let identity = round_trip(
        &sd,
        &t,
        tmp.path(),
        serde_json::json!({"heads": 8, "beta": 0.4}),
    );
    assert_eq!(identity.modules[FUSED].dims(), [2, 2 * (D1 + D2)]);
    assert!(identity
        .modules
        .keys()
        .any(|k| k.starts_with("kv.") && k.ends_with("to_k.lora_B")));
    let applied = generate(&sd, Some(&identity), AdapterUse::Apply);
    let tokens_only = generate(&sd, Some(&identity), AdapterUse::TrainOnly);
    let diff = max_diff(&applied, &tokens_only);
    assert!(
        diff > 1e-5,
        "the adapter and deltas changed nothing ({diff})"
    );
}

#[test]
fn sefi_on_sdxl_trains_resumes_and_generates() {
    let sd = sd();
    let tmp = tempfile::tempdir().unwrap();
    let options = SefiOptions {
        stages: 3,
        num_tokens: 2,
        init_word: None,
        class_word: "man".into(),
        attn_weight: 0.5,
        // 16-pixel photos, sdxl-tiny's VAE scales by 4: a 4×4 latent.
        layers: LayerSelect::parse(LayerSelect::DEFAULT, 4).unwrap(),
        parameterisation: Parameterisation::Generator,
        seed: 1,
    };
    let make =
        || -> Box<dyn Method> { Box::new(SefiMethod::new(&sd, "<alice>", &options).unwrap()) };
    let t = trains_and_resumes(&sd, tmp.path(), &make);
    let identity = round_trip(&sd, &t, tmp.path(), serde_json::json!({"stages": 3}));
    assert_eq!(identity.modules["stages.keys"].dims(), [3, 2, D1]);
    assert_eq!(identity.modules[KEYS_2].dims(), [3, 2, D2]);
    assert_eq!(identity.modules[VALUES_2].dims(), [3, 2, D2]);
    let with = generate(&sd, Some(&identity), AdapterUse::Apply);
    let without = generate(&sd, None, AdapterUse::Apply);
    let diff = max_diff(&with, &without);
    assert!(diff > 1e-5, "the identity changed nothing ({diff})");

    // An SD 2.x model refuses the staged SDXL identity in one line.
    let sd2 = StableDiffusion::load(
        fixtures_dir().join("sd2-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let err = load_identities(&sd2, &[tmp.path().join("alice.safetensors")], false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("SDXL") && !err.contains('\n'), "{err}");
}
