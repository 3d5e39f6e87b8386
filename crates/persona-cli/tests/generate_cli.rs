//! `persona generate` as a user runs it: images with their parameters, exact reproduction of diffusers from a
//! latents file, and broken models refused with a one-line error and a non-zero exit code.

use crate::common::{persona, tiny};
use std::path::{Path, PathBuf};

use persona_diffusion::pipeline::image::read_png_text;
use persona_diffusion::testing::load_reference;

#[test]
fn writes_pngs_with_parameters_and_params_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "a photo of a person",
        "--steps",
        "3",
        "--num-images",
        "2",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = read_png_text(&out.join("0001.png")).unwrap();
    let params = text
        .iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        params.starts_with("a photo of a person\n") && params.contains("Seed: 6"),
        "{params}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("params.json")).unwrap()).unwrap();
    assert_eq!(json["num_images"], 2);
    assert_eq!(json["scheduler"], "ddim");
    let img = image::open(out.join("0000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
}

/// The latents diffusers started from, as `--latents` reads them.
fn latents_file(dir: &Path, case: &str) -> PathBuf {
    let r = load_reference(&format!("reference/pipeline/{case}.safetensors")).unwrap();
    let path = dir.join("latents.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), r["latents"].clone())]),
        &path,
    )
    .unwrap();
    path
}

#[test]
fn latents_file_reproduces_diffusers_images() {
    let tmp = tempfile::tempdir().unwrap();
    let latents = latents_file(tmp.path(), "sd2-tiny_DPMSolverMultistepScheduler");
    let out = tmp.path().join("out");
    let o = persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "a photo of a face of a person",
        "--steps",
        "6",
        "--guidance",
        "7.5",
        "--scheduler",
        "dpm++2m",
        "--latents",
        latents.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want =
        load_reference("reference/pipeline/sd2-tiny_DPMSolverMultistepScheduler.safetensors")
            .unwrap()["image_u8"]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
    let mut got = Vec::new();
    for i in 0..2 {
        got.extend(
            image::open(out.join(format!("{i:04}.png")))
                .unwrap()
                .to_rgb8()
                .into_raw(),
        );
    }
    let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(
        differing * 1000 <= want.len(),
        "{differing} of {} bytes differ from diffusers",
        want.len()
    );
}

#[test]
fn broken_model_gives_one_line_error_and_failure_code() {
    let tmp = tempfile::tempdir().unwrap();
    let o = persona(&[
        "generate",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("model_index.json") && !err.contains("panicked"),
        "{err}"
    );
}
