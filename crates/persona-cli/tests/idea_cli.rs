//! ID-EA from the command line: `persona train --method idea` finds the face models through $PERSONA_MODELS,
//! records the recogniser and saves the adapter and K/V deltas; `persona generate` applies them (the images
//! differ from `--adapter train-only`); without face models the error says what is missing.

use std::path::Path;
use std::process::Command;

use persona_diffusion::testing::fixtures_dir;

fn persona(args: &[&str], models: &Path, home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_persona"))
        .args(args)
        .env("PERSONA_MODELS", models)
        .env("HOME", home)
        .output()
        .unwrap()
}

use persona_diffusion::testing::shared;

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

#[test]
fn train_idea_then_generate_with_and_without_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(celeba), Some(models)) = (shared("data/faces/celeba"), shared("models")) else {
        return;
    };
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["00000.jpg", "00001.jpg"] {
        std::fs::copy(celeba.join(name), photos.join(name)).unwrap();
    }
    let model = fixtures_dir().join("sd2-tiny");
    let (model, home) = (model.to_str().unwrap(), tmp.path());
    let out = tmp.path().join("alice.safetensors");
    let train = [
        "train",
        "--model",
        model,
        "--images",
        photos.to_str().unwrap(),
        "--token",
        "<alice>",
        "--method",
        "idea",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--resolution",
        "32",
        "--train-cross-attn-kv",
        "--reg",
        "mahalanobis",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = persona(&train, &models, home);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("face embedding: 2 photo(s), facenet"));
    let tensors = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    for name in [
        "adapter.gamma",
        "fused",
        "enhancer.face_proj.weight",
        "face.embedding",
    ] {
        assert!(tensors.contains_key(name), "identity lacks {name}");
    }
    assert!(tensors
        .keys()
        .any(|k| k.starts_with("kv.") && k.ends_with("to_v.lora_B")));

    let generate = |dir: &str, adapter: &str| {
        let dir = tmp.path().join(dir);
        let args = [
            "generate",
            "--model",
            model,
            "--identity",
            out.to_str().unwrap(),
            "--prompt",
            "a photo of {} person",
            "--steps",
            "2",
            "--adapter",
            adapter,
            "--out",
            dir.to_str().unwrap(),
        ];
        let o = persona(&args, &models, home);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pixels(&dir.join("0000.png"))
    };
    assert_ne!(generate("apply", "apply"), generate("tokens", "train-only"));

    let empty = tmp.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let again = tmp.path().join("bob.safetensors");
    let mut args = train.to_vec();
    *args.last_mut().unwrap() = again.to_str().unwrap();
    let o = persona(&args, &empty, home);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("face detector"),
        "{err}"
    );
}
