//! SeFi-IDE from the command line: `persona train --method sefi` writes an identity with per-stage K/V
//! tensors, `persona generate` uses it next to a plain identity, and `persona attention` writes one heat-map
//! overlay per cross-attention resolution (16×16 and 8×8 on the tiny pipeline).

use crate::common::persona;
use std::path::{Path, PathBuf};

use persona_diffusion::testing::fixtures_dir;

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Two photos copied from the shared CelebA sample, or a generated gradient when it is absent.
fn photos(tmp: &Path) -> PathBuf {
    let dir = tmp.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures_dir().join("../../shared/data/faces/celeba");
    for (i, name) in ["00000.jpg", "00001.jpg"].iter().enumerate() {
        if src.join(name).is_file() {
            std::fs::copy(src.join(name), dir.join(name)).unwrap();
        } else {
            image::RgbImage::from_fn(40, 40, |x, y| {
                image::Rgb([(x * 6) as u8, (y * 6) as u8, (i * 90) as u8])
            })
            .save(dir.join(format!("{i}.png")))
            .unwrap();
        }
    }
    dir
}

#[test]
fn train_generate_and_heat_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("sd2-tiny");
    let model = model.to_str().unwrap();
    let photos = photos(tmp.path());
    let sefi = tmp.path().join("s.safetensors");
    let ti = tmp.path().join("t.safetensors");
    let common = [
        "--model",
        model,
        "--images",
        photos.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--resolution",
        "32",
        "--no-face-crop",
    ];
    ok(persona(
        &[
            &[
                "train",
                "--method",
                "sefi",
                "--token",
                "<s>",
                "--attn-layers",
                "all",
                "--out",
                sefi.to_str().unwrap(),
            ],
            &common[..],
        ]
        .concat(),
    ));
    ok(persona(
        &[
            &[
                "train",
                "--method",
                "ti",
                "--token",
                "<t>",
                "--attn-loss",
                "0.01",
                "--attn-layers",
                "1",
                "--out",
                ti.to_str().unwrap(),
            ],
            &common[..],
        ]
        .concat(),
    ));
    let tensors = candle_core::safetensors::load(&sefi, &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensors["stages.keys"].dims(), [5, 1, 32]);
    assert_eq!(tensors["stages.values"].dims(), [5, 1, 32]);

    let out = tmp.path().join("gen");
    let ids = [
        "--identity",
        sefi.to_str().unwrap(),
        "--identity",
        ti.to_str().unwrap(),
    ];
    ok(persona(
        &[
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                "{0} next to {1}",
                "--steps",
                "3",
                "--scheduler",
                "euler-a",
                "--out",
                out.to_str().unwrap(),
            ],
            &ids[..],
        ]
        .concat(),
    ));
    assert!(out.join("0000.png").is_file());

    let maps = tmp.path().join("maps");
    ok(persona(
        &[
            &[
                "attention",
                "--model",
                model,
                "--prompt",
                "a photo of {0} next to {1}",
                "--token",
                "<s>",
                "--steps",
                "3",
                "--out",
                maps.to_str().unwrap(),
            ],
            &ids[..],
        ]
        .concat(),
    ));
    let mut written: Vec<String> = std::fs::read_dir(&maps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "attention.json",
            "attention_16x16.png",
            "attention_8x8.png",
            "image.png"
        ]
    );
    let overlay = image::open(maps.join("attention_8x8.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (32, 32));

    let missing = persona(&[
        "attention",
        "--model",
        model,
        "--prompt",
        "a photo of a person",
        "--token",
        "dog",
        "--steps",
        "2",
        "--out",
        maps.to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not occur in the prompt"));
}

/// The same on SDXL (`fixtures/sdxl-tiny`, whose tokenizers have "man" as one token): SeFi-IDE with its
/// attention loss and Cross Init with `--attn-loss` train, generate side by side, draw heat maps, and the SeFi
/// identity exports to the SDXL A1111 layout.
#[test]
fn sdxl_train_generate_and_heat_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("sdxl-tiny");
    let model = model.to_str().unwrap();
    let photos = photos(tmp.path());
    let (sefi, cross) = (
        tmp.path().join("s.safetensors"),
        tmp.path().join("c.safetensors"),
    );
    let common = [
        "--model",
        model,
        "--images",
        photos.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--resolution",
        "16",
        "--no-face-crop",
        "--class-word",
        "man",
        "--attn-layers",
        "all",
    ];
    let train = |method: &str, token: &str, out: &Path, extra: &[&str]| {
        let head = ["train", "--method", method, "--token", token, "--out"];
        ok(persona(
            &[&head[..], &[out.to_str().unwrap()], &common[..], extra].concat(),
        ));
    };
    train("sefi", "<s>", &sefi, &["--stages", "3"]);
    train("cross-init", "<c>", &cross, &["--attn-loss", "0.01"]);
    let tensors = candle_core::safetensors::load(&sefi, &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensors["stages.keys"].dims(), [3, 1, 32]);
    assert_eq!(tensors["stages.values_2"].dims(), [3, 1, 48]);

    let ids = [
        "--identity",
        sefi.to_str().unwrap(),
        "--identity",
        cross.to_str().unwrap(),
    ];
    let out = tmp.path().join("gen");
    let head = [
        "generate",
        "--model",
        model,
        "--prompt",
        "{0} next to {1} man",
    ];
    let tail = ["--steps", "3", "--height", "16", "--width", "24", "--out"];
    ok(persona(
        &[&head[..], &tail[..], &[out.to_str().unwrap()], &ids[..]].concat(),
    ));
    assert!(out.join("0000.png").is_file());

    let maps = tmp.path().join("maps");
    let head = [
        "attention",
        "--model",
        model,
        "--prompt",
        "a photo of {0} next to {1} man",
    ];
    let tail = [
        "--token", "<s>", "--steps", "3", "--height", "32", "--width", "32", "--out",
    ];
    ok(persona(
        &[&head[..], &tail[..], &[maps.to_str().unwrap()], &ids[..]].concat(),
    ));
    assert!(maps.join("attention_8x8.png").is_file() && maps.join("attention_4x4.png").is_file());

    let a1111 = tmp.path().join("s-a1111.safetensors");
    let export = ["export", "--format", "a1111"];
    ok(persona(
        &[
            &export[..],
            &[sefi.to_str().unwrap(), a1111.to_str().unwrap()],
        ]
        .concat(),
    ));
    let tensors = candle_core::safetensors::load(&a1111, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(names, ["clip_g", "clip_l"]);
}
