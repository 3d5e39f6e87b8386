//! Training on SDXL (`fixtures/sdxl-tiny`): one Textual Inversion / Cross Initialization step against PyTorch
//! (`tools/fixtures/sdxl_train_step.py`: both token tables, pooled embeddings, per-sample time ids), the
//! per-photo micro-conditioning, and a short run whose identity generates and exports.

use candle_core::{DType, Tensor, Var};
use persona_diffusion::pipeline::{GenerateParams, LoadOptions, StableDiffusion};
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};
use persona_faces::ModelSearch;
use persona_identity::{export_a1111, Identity};
use persona_train::captions::Captions;
use persona_train::data::Sample;
use persona_train::methods::anchor::{self, Table};
use persona_train::methods::{MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::recipe::{self, MethodName, MethodOptions, Recipe};
use persona_train::trainer::{StepInputs, TrainConfig, Trainer};

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let err = rel_error(got, want).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{name}: relative error {err:.2e}");
}

fn sd() -> StableDiffusion {
    StableDiffusion::load(
        fixtures_dir().join("sdxl-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[derive(serde::Deserialize)]
struct Case {
    captions: Vec<String>,
    timesteps: Vec<usize>,
    time_ids: Vec<[f32; 6]>,
}

#[test]
fn sdxl_anchors_match_reference() {
    let sd = sd();
    let r = load_reference("reference/train/sdxl-tiny_step.safetensors").unwrap();
    let names = anchor::read_names(None).unwrap();
    let first = anchor::cross_init_anchor_in(Table::first(&sd), &names, 2).unwrap();
    let second = anchor::cross_init_anchor_in(Table::second(&sd).unwrap(), &names, 2).unwrap();
    check("anchor text_encoder", &first, &r["cross-init.init"]);
    check("anchor text_encoder_2", &second, &r["cross-init.init_2"]);
}

#[test]
fn sdxl_one_step_matches_pytorch() {
    let sd = sd();
    let r = load_reference("reference/train/sdxl-tiny_step.safetensors").unwrap();
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("reference/train/sdxl-tiny_step.json"))
            .unwrap(),
    )
    .unwrap();
    let inputs = StepInputs {
        latents: r["latents"].clone(),
        noise: r["noise"].clone(),
        timesteps: case.timesteps.clone(),
        captions: case.captions.clone(),
        time_ids: case.time_ids.clone(),
    };
    for (kind, reg) in [(MethodKind::Ti, 0.0), (MethodKind::CrossInit, 0.01)] {
        let p = kind.name();
        let before = r[&format!("{p}.rows_before")].clone();
        let before_2 = r[&format!("{p}.rows_before_2")].clone();
        let method = TokenMethod {
            kind,
            names: vec!["<id>_v0".into(), "<id>_v1".into()],
            rows: Var::from_tensor(&before).unwrap(),
            init: before.clone(),
            rows_2: Some(Var::from_tensor(&before_2).unwrap()),
            init_2: Some(before_2.clone()),
            reg_weight: reg,
        };
        let (rows, rows_2) = (method.rows.clone(), method.rows_2.clone().unwrap());
        let pixels = Tensor::zeros((3, 16, 16), DType::F32, &sd.device).unwrap();
        let trainer = Trainer::new(
            &sd,
            Box::new(method),
            vec![Sample::from_pixels(pixels).unwrap()],
            Captions::new(None, "face of {tokens} person").unwrap(),
            0,
        )
        .unwrap();
        let (cond, pooled) = trainer
            .method
            .encode(
                &sd,
                &case.captions.iter().map(String::as_str).collect::<Vec<_>>(),
                &case.timesteps,
            )
            .unwrap();
        check(
            &format!("{p} condition"),
            &cond.key,
            &r[&format!("{p}.cond")],
        );
        check(
            &format!("{p} pooled"),
            &pooled.unwrap(),
            &r[&format!("{p}.pooled")],
        );
        let (total, _, _) = trainer.loss(&inputs).unwrap();
        check(
            &format!("{p} loss"),
            &total.reshape(1).unwrap(),
            &r[&format!("{p}.loss")],
        );
        let grads = total.backward().unwrap();
        check(
            &format!("{p} grad rows (text_encoder)"),
            grads.get(rows.as_tensor()).unwrap(),
            &r[&format!("{p}.grad_rows")],
        );
        check(
            &format!("{p} grad rows (text_encoder_2)"),
            grads.get(rows_2.as_tensor()).unwrap(),
            &r[&format!("{p}.grad_rows_2")],
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
            &format!("{p} rows after AdamW (text_encoder)"),
            rows.as_tensor(),
            &r[&format!("{p}.rows_after")],
        );
        check(
            &format!("{p} rows after AdamW (text_encoder_2)"),
            rows_2.as_tensor(),
            &r[&format!("{p}.rows_after_2")],
        );
    }
}

#[test]
fn time_ids_record_the_photo_size_and_crop() {
    let s = Sample {
        path: "p.jpg".into(),
        pixels: [
            Tensor::zeros((3, 16, 16), DType::F32, &candle_core::Device::Cpu).unwrap(),
            Tensor::zeros((3, 16, 16), DType::F32, &candle_core::Device::Cpu).unwrap(),
        ],
        face_found: true,
        original_size: (300, 400),
        crop: (100, 40, 200),
    };
    // the photo resized by 512/200 and cropped at (40, 100) · 2.56
    assert_eq!(s.time_ids(512), [300.0, 400.0, 102.0, 256.0, 512.0, 512.0]);
}

fn write_photos(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, (w, h)) in [(40u32, 24u32), (24, 36), (30, 30)].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 + i as u32 * 40) as u8,
                (y * 5) as u8,
                ((x + y) * 3) as u8,
            ])
        });
        img.save(dir.join(format!("{i}.png"))).unwrap();
    }
}

fn params(identity: Option<&Identity>) -> GenerateParams {
    let (tokens, names) = match identity {
        Some(i) => persona_identity::learned_tokens(std::slice::from_ref(i)),
        None => (Vec::new(), Vec::new()),
    };
    let prompt = if identity.is_some() {
        persona_diffusion::pipeline::expand_prompt("a photo of {}", &names).unwrap()
    } else {
        "a photo of a person".into()
    };
    GenerateParams {
        prompt,
        negative_prompt: "blurry".into(),
        steps: 3,
        guidance: 4.0,
        scheduler: None,
        height: 16,
        width: 16,
        seed: 5,
        num_images: 1,
        batch_size: 1,
        latents: None,
        text_output: persona_diffusion::models::clip_text::Output::Last,
        tokens,
    }
}

#[test]
fn sdxl_identity_trains_generates_and_exports() {
    let sd = sd();
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    write_photos(&photos);
    let out = tmp.path().join("alice.safetensors");
    let cfg = TrainConfig {
        steps: 3,
        batch_size: 2,
        grad_accum: 1,
        lr: 0.05,
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig::default(),
        seed: 1,
        save_every: 0,
        resolution: 16,
        repeats: 1,
        out: out.clone(),
    };
    let recipe = |method| Recipe {
        method,
        token: "<alice>".into(),
        images: photos.clone(),
        options: MethodOptions::default(),
        faces: ModelSearch::default(),
        face_crop: false,
        templates: None,
        subject: None,
    };
    // SeFi-IDE through the recipe (its class word one token of the tiny vocabulary): the identity carries
    // both tables' per-stage vectors. ID-EA needs a face recogniser: `sdxl_methods.rs` trains it directly.
    let sefi = Recipe {
        options: MethodOptions {
            class_word: "man".into(),
            stages: 2,
            ..MethodOptions::default()
        },
        ..recipe(MethodName::Sefi)
    };
    let staged = recipe::train(&sd, "sdxl-tiny", &sefi, &cfg, false, &mut |_| {}).unwrap();
    assert!(staged.is_sdxl());
    assert_eq!(staged.modules["stages.keys_2"].dims(), [2, 1, 48]);
    let identity = recipe::train(
        &sd,
        "sdxl-tiny",
        &recipe(MethodName::CrossInit),
        &cfg,
        false,
        &mut |_| {},
    )
    .unwrap();
    assert!(identity.is_sdxl());
    assert_eq!(identity.embeddings.dims(), [2, 32]);
    assert_eq!(identity.rows_2().unwrap().dims(), [2, 48]);
    identity.save(&out).unwrap();
    let loaded = persona_identity::load(&sd, std::slice::from_ref(&out), false)
        .unwrap()
        .remove(0);

    let with = sd.generate(&params(Some(&loaded)), &mut |_| {}).unwrap();
    let without = sd.generate(&params(None), &mut |_| {}).unwrap();
    let finite = with.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(finite.is_finite());
    let diff = (&with - &without)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-4, "the identity changed nothing ({diff})");

    let a1111 = tmp.path().join("alice-a1111.safetensors");
    export_a1111(&loaded, &a1111).unwrap();
    let bytes = std::fs::read(&a1111).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, ["clip_g", "clip_l"]);
    assert_eq!(st.tensor("clip_l").unwrap().shape(), [2, 32]);
    assert_eq!(st.tensor("clip_g").unwrap().shape(), [2, 48]);

    // an SD 2.x model refuses the SDXL identity in one line
    let sd2 = StableDiffusion::load(
        fixtures_dir().join("sd2-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let err = persona_identity::load(&sd2, &[out], false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("SDXL") && !err.contains('\n'), "{err}");
}

#[derive(serde::Deserialize)]
struct GenCase {
    prompt: String,
    negative_prompt: String,
    num_inference_steps: usize,
    guidance_scale: f64,
    height: usize,
    width: usize,
}

/// persona's generation with SDXL learned tokens against diffusers' pipeline after `load_textual_inversion`
/// into both text encoders (the reference: `tools/fixtures/sdxl_train_step.py`).
#[test]
fn sdxl_identity_generation_matches_diffusers() {
    let sd = sd();
    let r = load_reference("reference/train/sdxl-tiny_identity_generate.safetensors").unwrap();
    let case: GenCase = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures_dir().join("reference/train/sdxl-tiny_identity_generate.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let tokens = persona_diffusion::pipeline::LearnedTokens {
        names: vec!["<id>_v0".into(), "<id>_v1".into()],
        rows: r["rows"].clone(),
        rows_2: Some(r["rows_2"].clone()),
    };
    let p = GenerateParams {
        prompt: case.prompt,
        negative_prompt: case.negative_prompt,
        steps: case.num_inference_steps,
        guidance: case.guidance_scale,
        scheduler: None,
        height: case.height,
        width: case.width,
        seed: 0,
        num_images: 1,
        batch_size: 1,
        latents: Some(r["latents"].clone()),
        text_output: persona_diffusion::models::clip_text::Output::Last,
        tokens: vec![tokens],
    };
    let image = sd.generate(&p, &mut |_| {}).unwrap();
    let want = r["image"].permute((0, 3, 1, 2)).unwrap();
    let mae = (&image - &want)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("identity generation: mean abs error {mae:.2e}");
    assert!(mae <= 1.0 / 255.0, "mean abs error {mae}");
}
