//! ID-EA on the tiny pipeline with real photos and the FaceNet recogniser: the loss on a fixed batch falls
//! over 50 steps, the gate γ leaves 0, the identity file round-trips into generation (the adapter changes the
//! images against `--adapter train-only`; several identities adapt in turn, the prompt rows only), and a
//! resumed run ends exactly where an uninterrupted one does.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::{AttentionControl, Condition, LayerId};
use persona_diffusion::pipeline::{GenerateParams, LoadOptions, StableDiffusion};
use persona_diffusion::testing::fixtures_dir;
use persona_faces::{FaceAnalyzer, ModelSearch};
use persona_identity::learned_tokens;
use persona_identity::Identity;
use persona_identity::{AdapterUse, IdentityControl};
use persona_train::captions::Captions;
use persona_train::data::load_folder;
use persona_train::methods::idea::face::identity_embedding;
use persona_train::methods::idea::{Idea, IdeaConfig, FUSED};
use persona_train::methods::InitOptions;
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::output::to_identity;
use persona_train::trainer::{Plan, TrainConfig, Trainer};

pub(crate) use persona_diffusion::testing::shared;

fn photos(tmp: &Path) -> Option<PathBuf> {
    let src = shared("data/faces/celeba")?;
    let dir = tmp.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["00000.jpg", "00001.jpg", "00002.jpg"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    Some(dir)
}

fn sd() -> StableDiffusion {
    StableDiffusion::load(
        fixtures_dir().join("sd2-tiny").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn config(out: PathBuf, steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        grad_accum: 1,
        lr: 0.012,
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig {
            eps: 1e-7,
            ..Default::default()
        },
        seed: 3,
        save_every: 0,
        resolution: 32,
        repeats: 100,
        out,
    }
}

fn trainer<'a>(sd: &'a StableDiffusion, photos: &Path, face: &Tensor) -> Trainer<'a> {
    let init = InitOptions {
        num_tokens: 2,
        init_words: None,
        names: None,
    };
    let method = Idea::new(
        sd,
        "<alice>",
        IdeaConfig::new(init, 3),
        face.clone(),
        "facenet",
    )
    .unwrap();
    let samples = load_folder(photos, 32, None, &sd.device).unwrap();
    Trainer::new(
        sd,
        Box::new(method),
        samples,
        Captions::new(None, "face of {tokens} person").unwrap(),
        3,
    )
    .unwrap()
}

/// Every trainable tensor's values, by name (also used by `sdxl_methods.rs`).
pub(crate) fn values(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.method
        .vars()
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

fn generate(sd: &StableDiffusion, identity: &Identity, adapter: AdapterUse) -> Vec<f32> {
    let (tokens, names) = learned_tokens(std::slice::from_ref(identity));
    let prompt =
        persona_diffusion::pipeline::expand_prompt("a photo of {} person", &names).unwrap();
    let params = GenerateParams {
        prompt,
        negative_prompt: String::new(),
        steps: 3,
        guidance: 7.5,
        scheduler: None,
        height: 32,
        width: 32,
        seed: 1,
        num_images: 1,
        batch_size: 1,
        latents: None,
        text_output: Output::Last,
        tokens,
    };
    let control = IdentityControl::new(sd, std::slice::from_ref(identity), adapter, true).unwrap();
    let images = sd
        .generate_with(&params, control.as_ref().map(|c| c as _), &mut |_| {})
        .unwrap();
    images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn idea_trains_saves_generates_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(photos), Some(models)) = (photos(tmp.path()), shared("models")) else {
        return;
    };
    let sd = sd();
    let analyzer = FaceAnalyzer::from_search(&ModelSearch::in_dir(&models)).unwrap();
    let embed = |img: &image::RgbImage| {
        analyzer
            .embed_largest(img)
            .map(|f| f.map(|(_, v)| v))
            .map_err(persona_train::Error::from)
    };
    let (face, used) = identity_embedding(&photos, &embed, &sd.device).unwrap();
    assert_eq!(used, 3);
    assert_eq!(face.dims(), &[512]);

    let start = std::time::Instant::now();
    let mut t = trainer(&sd, &photos, &face);
    let eval: Vec<_> = (0..4)
        .map(|m| {
            t.draw(
                1_000_000,
                m,
                &Plan {
                    batch: 2,
                    accum: 1,
                    repeats: 1,
                },
            )
            .unwrap()
        })
        .collect();
    let eval_loss =
        |t: &Trainer| eval.iter().map(|i| t.eval_loss(i).unwrap()).sum::<f64>() / eval.len() as f64;
    let before = eval_loss(&t);
    let cfg = config(tmp.path().join("alice.safetensors"), 50);
    let mut opt = AdamW::new(t.method.vars(), cfg.adam).unwrap();
    t.run(&cfg, &mut opt, 0, &mut |_| {}).unwrap();
    let after = eval_loss(&t);
    let gamma = values(&t)
        .into_iter()
        .find(|(n, _)| n == "adapter.gamma")
        .unwrap()
        .1[0];
    eprintln!(
        "50 steps in {:.1} s; evaluation loss {before:.5} → {after:.5}; γ = {gamma:.4}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        after < before,
        "loss on the fixed batch did not fall: {before} → {after}"
    );
    assert!(gamma.abs() > 1e-3, "γ stayed at {gamma}");

    // The identity file round-trips, and the adapter it carries changes the images.
    let mut identity = to_identity(
        &sd,
        "sd2-tiny",
        t.method.as_ref(),
        &cfg,
        "<alice>",
        serde_json::json!({"heads": 8, "beta": 0.4}),
    )
    .unwrap();
    identity.meta.face_model = Some("facenet".into());
    identity.save(&cfg.out).unwrap();
    let loaded = Identity::load(&cfg.out).unwrap();
    assert_eq!(loaded.meta.method, "idea");
    assert_eq!(loaded.meta.face_model.as_deref(), Some("facenet"));
    for name in [
        "adapter.gamma",
        FUSED,
        "enhancer.to_out.weight",
        "adapter.attn.in_proj_weight",
        "face.embedding",
    ] {
        assert!(
            loaded.modules.contains_key(name),
            "identity file lacks {name}"
        );
    }
    let with_adapter = generate(&sd, &loaded, AdapterUse::Apply);
    let tokens_only = generate(&sd, &loaded, AdapterUse::TrainOnly);
    let diff = with_adapter
        .iter()
        .zip(&tokens_only)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("largest pixel difference, adapter vs train-only: {diff:.4}");
    assert!(diff > 1e-3, "the adapter did not change the images");

    // Several identities adapt in turn, and with guidance only the prompt rows (the second half) change.
    let mut bob = loaded.clone();
    bob.token = "<bob>".into();
    bob.tokens = vec!["<bob>_v0".into(), "<bob>_v1".into()];
    let both = IdentityControl::new(&sd, &[loaded.clone(), bob], AdapterUse::Apply, true)
        .unwrap()
        .unwrap();
    let one = IdentityControl::new(&sd, std::slice::from_ref(&loaded), AdapterUse::Apply, false)
        .unwrap()
        .unwrap();
    let layer = LayerId {
        name: "any".into(),
        resolution: (1, 1),
        heads: 1,
    };
    let cond = Condition::new(Tensor::randn(0f32, 1., (2, 77, 32), &sd.device).unwrap());
    let adapted = both.condition(&layer, &cond).unwrap().unwrap().key;
    let prompt_row = Condition::new(cond.key.narrow(0, 1, 1).unwrap());
    let once = one.condition(&layer, &prompt_row).unwrap().unwrap();
    let twice = one
        .condition(&layer, &Condition::new(once.key.copy().unwrap()))
        .unwrap()
        .unwrap()
        .key;
    let max_diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(
        max_diff(
            &adapted.narrow(0, 0, 1).unwrap(),
            &cond.key.narrow(0, 0, 1).unwrap()
        ),
        0.0
    );
    assert!(max_diff(&adapted.narrow(0, 1, 1).unwrap(), &twice) < 1e-6);
    assert!(
        max_diff(&twice, &once.key) > 1e-4,
        "the second adapter changed nothing"
    );

    // Resume: 4 steps straight vs 2 steps, a fresh trainer from the checkpoint, 2 more.
    let full_cfg = config(tmp.path().join("straight.safetensors"), 4);
    let mut straight = trainer(&sd, &photos, &face);
    let mut opt = AdamW::new(straight.method.vars(), full_cfg.adam).unwrap();
    straight.run(&full_cfg, &mut opt, 0, &mut |_| {}).unwrap();
    let short = TrainConfig {
        steps: 2,
        ..config(tmp.path().join("split.safetensors"), 4)
    };
    let mut first = trainer(&sd, &photos, &face);
    let mut opt = AdamW::new(first.method.vars(), short.adam).unwrap();
    first.run(&short, &mut opt, 0, &mut |_| {}).unwrap();
    let mut second = trainer(&sd, &photos, &face);
    let mut opt = AdamW::new(second.method.vars(), short.adam).unwrap();
    assert_eq!(second.resume(&short, &mut opt).unwrap(), 2);
    second
        .run(
            &TrainConfig {
                steps: 4,
                ..short.clone()
            },
            &mut opt,
            2,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(
        values(&second),
        values(&straight),
        "resumed run differs from the uninterrupted one"
    );
}

#[test]
fn photos_without_a_face_are_skipped_and_none_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, shade) in [("a.png", 10u8), ("b.png", 200), ("c.png", 250)] {
        image::RgbImage::from_pixel(8, 8, image::Rgb([shade; 3]))
            .save(tmp.path().join(name))
            .unwrap();
    }
    // A stand-in recogniser: "finds a face" in dark photos only, embedding [1, 0] or [0, 1] by shade.
    let embed = |img: &image::RgbImage| {
        let v = img.get_pixel(0, 0)[0];
        Ok((v < 220).then(|| {
            if v < 100 {
                vec![2.0, 0.0]
            } else {
                vec![0.0, 3.0]
            }
        }))
    };
    let (face, used) = identity_embedding(tmp.path(), &embed, &candle_core::Device::Cpu).unwrap();
    assert_eq!(used, 2);
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let got = face.to_vec1::<f32>().unwrap();
    assert!(
        (got[0] - h).abs() < 1e-6 && (got[1] - h).abs() < 1e-6,
        "{got:?}"
    );

    let none = |_: &image::RgbImage| Ok(None);
    let err = identity_embedding(tmp.path(), &none, &candle_core::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no face found in any photo") && err.contains(tmp.path().to_str().unwrap()),
        "{err}"
    );
}
