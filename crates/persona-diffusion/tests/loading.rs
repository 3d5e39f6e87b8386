//! Broken model folders give one clear error naming the file and the tensor, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_diffusion::testing::fixtures_dir;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A private copy of the sd2-tiny pipeline to break.
fn pipeline_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd2-tiny");
    copy_dir(&fixtures_dir().join("sd2-tiny"), &dir);
    (tmp, dir)
}

fn load_error(dir: &Path) -> String {
    match StableDiffusion::load(dir.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("a broken pipeline loaded"),
        Err(e) => e.to_string(),
    }
}

fn rewrite_unet(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let path = dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn missing_tensor_is_named_with_its_file() {
    let (_tmp, dir) = pipeline_copy();
    let file = rewrite_unet(&dir, |t| {
        t.remove("mid_block.attentions.0.proj_in.weight");
    });
    let err = load_error(&dir);
    assert!(
        err.contains("missing tensors: mid_block.attentions.0.proj_in.weight"),
        "{err}"
    );
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn wrong_shape_is_named() {
    let (_tmp, dir) = pipeline_copy();
    rewrite_unet(&dir, |t| {
        t.insert(
            "conv_in.bias".into(),
            Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_error(&dir);
    assert!(
        err.contains("conv_in.bias has shape [7], expected [32]"),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let (_tmp, dir) = pipeline_copy();
    rewrite_unet(&dir, |t| {
        t.insert(
            "extra.weight".into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(load_error(&dir).contains("unexpected tensors: extra.weight"));
}

#[test]
fn truncated_file_is_named() {
    let (_tmp, dir) = pipeline_copy();
    let path = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn missing_config_is_named() {
    let (_tmp, dir) = pipeline_copy();
    let path = dir.join("unet/config.json");
    std::fs::remove_file(&path).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn not_a_pipeline_folder() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(load_error(tmp.path()).contains("model_index.json"));
}

#[test]
fn hub_id_resolves_from_the_local_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("hub/models--someone--tiny-sd");
    copy_dir(
        &fixtures_dir().join("sd2-tiny"),
        &repo.join("snapshots/abc123"),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    std::env::set_var("HF_HUB_CACHE", tmp.path().join("hub"));
    let found = persona_diffusion::loading::resolve_model("someone/tiny-sd").unwrap();
    assert_eq!(found, repo.join("snapshots/abc123"));
    let err = persona_diffusion::loading::resolve_model("someone/absent")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found in the Hugging Face cache"), "{err}");
}
