//! The shared training loop on the tiny pipeline with real face photos: the loss on a fixed evaluation batch
//! falls, a resumed run ends where an uninterrupted one does, and bad input is refused clearly.

use std::path::{Path, PathBuf};

use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_diffusion::testing::fixtures_dir;
use persona_train::captions::Captions;
use persona_train::data::{list_images, load_folder};
use persona_train::methods::{InitOptions, MethodKind, TokenMethod};
use persona_train::optim::{AdamW, AdamWConfig, Schedule};
use persona_train::trainer::{Plan, TrainConfig, Trainer};

fn faces_dir() -> PathBuf {
    let dir = fixtures_dir().join("../../shared/data/faces/celeba");
    if !dir.is_dir() && std::env::var("CI").is_ok() {
        panic!(
            "{} is missing: CI must have shared/ beside the checkout",
            dir.display()
        );
    }
    dir
}

fn photos(tmp: &Path) -> Option<PathBuf> {
    let src = faces_dir();
    if !src.is_dir() {
        eprintln!("skipping: {} not found", src.display());
        return None;
    }
    let dir = tmp.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["00000.jpg", "00001.jpg", "00002.jpg"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not an image, ignored").unwrap();
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
        lr: 0.05,
        scale_lr: false,
        schedule: Schedule::Constant,
        warmup: 0,
        adam: AdamWConfig::default(),
        seed: 3,
        save_every: 20,
        resolution: 32,
        repeats: 100,
        out,
    }
}

fn trainer<'a>(sd: &'a StableDiffusion, photos: &Path) -> Trainer<'a> {
    let init = InitOptions {
        num_tokens: 2,
        init_words: None,
        names: None,
    };
    let method = TokenMethod::new(sd, MethodKind::CrossInit, "<alice>", &init, 1e-5).unwrap();
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

/// diffusers' `--repeats`: within each epoch of photos × repeats samples every photo comes up exactly `repeats`
/// times, in an order that changes from epoch to epoch and depends on the sample's index alone.
#[test]
fn every_epoch_shows_each_photo_repeats_times() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(photos) = photos(tmp.path()) else {
        return;
    };
    let sd = sd();
    let t = trainer(&sd, &photos);
    let n = persona_train::data::list_images(&photos).unwrap().len();
    let repeats = 4;
    let epoch = |e: usize| {
        (e * n * repeats..(e + 1) * n * repeats)
            .map(|g| t.photo_of(g, repeats))
            .collect::<Vec<_>>()
    };
    let (first, second) = (epoch(0), epoch(1));
    for order in [&first, &second] {
        let mut counts = vec![0; n];
        order.iter().for_each(|&p| counts[p] += 1);
        assert_eq!(counts, vec![repeats; n], "{order:?}");
    }
    assert_ne!(first, second, "each epoch is shuffled anew");
    assert_eq!(first, epoch(0), "the order depends on the index alone");
}

#[test]
fn cross_init_lowers_the_loss_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(photos) = photos(tmp.path()) else {
        return;
    };
    let sd = sd();

    let mut t = trainer(&sd, &photos);
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
    let cfg = config(tmp.path().join("full.safetensors"), 50);
    let mut opt = AdamW::new(t.method.vars(), cfg.adam).unwrap();
    t.run(&cfg, &mut opt, 0, &mut |_| {}).unwrap();
    let after = eval_loss(&t);
    eprintln!("evaluation loss {before:.5} → {after:.5}");
    assert!(
        after < before,
        "loss on the fixed batch did not fall: {before} → {after}"
    );
    let full = t.method.vars()[0].1.as_tensor().to_vec2::<f32>().unwrap();
    let log = std::fs::read_to_string(tmp.path().join("full.loss.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 50);

    // Interrupted at step 20 (its checkpoint), then resumed by a fresh trainer.
    let cfg = config(tmp.path().join("split.safetensors"), 50);
    let mut first = trainer(&sd, &photos);
    let mut opt = AdamW::new(first.method.vars(), cfg.adam).unwrap();
    let short = TrainConfig {
        steps: 20,
        ..cfg.clone()
    };
    first.run(&short, &mut opt, 0, &mut |_| {}).unwrap();
    let mut second = trainer(&sd, &photos);
    let mut opt = AdamW::new(second.method.vars(), cfg.adam).unwrap();
    let start = second.resume(&short, &mut opt).unwrap();
    assert_eq!(start, 20);
    // The checkpoint's settings must match: the resumed run continues to 50 with the short run's key.
    second
        .run(&short_then_full(&short, &cfg), &mut opt, start, &mut |_| {})
        .unwrap();
    let resumed = second.method.vars()[0]
        .1
        .as_tensor()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(
        resumed, full,
        "resumed run differs from the uninterrupted one"
    );
}

/// The full run's settings under the short run's output path.
fn short_then_full(short: &TrainConfig, full: &TrainConfig) -> TrainConfig {
    TrainConfig {
        out: short.out.clone(),
        ..full.clone()
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "no images here").unwrap();
    let err = list_images(&empty).unwrap_err().to_string();
    assert!(
        err.contains("no training images") && err.contains("empty"),
        "{err}"
    );

    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("broken.jpg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
    let err = load_folder(&corrupt, 32, None, &candle_core::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("broken.jpg"), "{err}");

    assert!("dreambooth"
        .parse::<MethodKind>()
        .unwrap_err()
        .to_string()
        .contains("unknown method"));

    let sd = sd();
    let init = InitOptions {
        num_tokens: 2,
        init_words: None,
        names: None,
    };
    let err = TokenMethod::new(&sd, MethodKind::Ti, "person", &init, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already in the vocabulary"), "{err}");
}
