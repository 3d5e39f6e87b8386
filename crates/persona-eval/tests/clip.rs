//! The CLIP scorer against transformers 5.23 on the tiny random `CLIPModel` (`fixtures/clip-tiny`), the key/shape
//! manifest of the real `openai/clip-vit-base-patch32`, and loading errors. References are made by
//! `tools/fixtures/clip/make_clip.py`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use persona_diffusion::nn::{Activation, Weights};
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};
use persona_eval::clip::{cosine, ClipModel, ClipScorer, Config};

const TOL: f64 = 1e-4;

fn tiny_dir() -> PathBuf {
    fixtures_dir().join("clip-tiny")
}

fn reference() -> HashMap<String, Tensor> {
    load_reference("reference/clip/model.safetensors").unwrap()
}

/// The tiny model with its config changed by `edit`.
fn tiny_with(edit: impl FnOnce(&mut Config)) -> ClipModel {
    let mut config = Config::read(&tiny_dir().join("config.json")).unwrap();
    edit(&mut config);
    let w = Weights::from_files(&[tiny_dir().join("model.safetensors")], &Device::Cpu).unwrap();
    let model = ClipModel::from_weights(&w, &config).unwrap();
    w.finish().unwrap();
    model
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let err = rel_error(got, want).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= TOL, "{name}: relative error {err:.2e} > {TOL:.0e}");
}

#[test]
fn tiny_model_matches_transformers() {
    let r = reference();
    let m = ClipModel::load(&tiny_dir(), &Device::Cpu).unwrap();
    let (pixels, ids) = (&r["pixel_values"], &r["input_ids"]);
    check(
        "image_features",
        &m.image_features(pixels).unwrap(),
        &r["image_features"],
    );
    check(
        "text_features",
        &m.text_features(ids).unwrap(),
        &r["text_features"],
    );
    check(
        "image_embeds",
        &m.image_embeds(pixels).unwrap(),
        &r["image_embeds"],
    );
    check(
        "text_embeds",
        &m.text_embeds(ids).unwrap(),
        &r["text_embeds"],
    );
    let logits = (m.score(pixels, ids).unwrap() * m.logit_scale()).unwrap();
    check("logits_per_image", &logits, &r["logits_per_image"]);
}

/// Padding to 77 (the SD tokenizer's fixed length) or to the longest prompt gives the same text embedding.
#[test]
fn padding_does_not_change_text_embeds() {
    let r = reference();
    let m = ClipModel::load(&tiny_dir(), &Device::Cpu).unwrap();
    check(
        "text_embeds padded to 77",
        &m.text_embeds(&r["input_ids_77"]).unwrap(),
        &r["text_embeds_77"],
    );
    check(
        "77 vs longest",
        &m.text_embeds(&r["input_ids_77"]).unwrap(),
        &r["text_embeds"],
    );
}

/// With an added token (id above `<|endoftext|>`) in the ids, eos_token_id 2 pools at the largest id and any other
/// eos_token_id at the first EOS, as transformers does.
#[test]
fn pooling_follows_transformers_eos_rule() {
    let r = reference();
    let ids = &r["pooling_ids"];
    check(
        "eos 2 (argmax)",
        &tiny_with(|_| ()).text_embeds(ids).unwrap(),
        &r["pooling_eos2"],
    );
    let m = tiny_with(|c| c.text_config.eos_token_id = 49407);
    check(
        "eos 49407 (first EOS)",
        &m.text_embeds(ids).unwrap(),
        &r["pooling_eos49407"],
    );
}

/// The parity checks must be able to fail: exact GELU in place of quick_gelu, in either tower, is caught.
#[test]
fn parity_detects_a_changed_activation() {
    let r = reference();
    let vision = tiny_with(|c| c.vision_config.hidden_act = Activation::Gelu);
    let err = rel_error(
        &vision.image_embeds(&r["pixel_values"]).unwrap(),
        &r["image_embeds"],
    )
    .unwrap();
    eprintln!("vision tower with gelu: relative error {err:.2e}");
    assert!(err > 10.0 * TOL);
    let text = tiny_with(|c| c.text_config.hidden_act = Activation::Gelu);
    let err = rel_error(
        &text.text_embeds(&r["input_ids"]).unwrap(),
        &r["text_embeds"],
    )
    .unwrap();
    eprintln!("text tower with gelu: relative error {err:.2e}");
    assert!(err > 10.0 * TOL);
}

/// Our tokenizer with padding to the longest gives the ids transformers' `CLIPTokenizer(padding=True)` gave.
#[test]
fn scorer_tokenizes_like_transformers() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("reference/clip/model.json")).unwrap(),
    )
    .unwrap();
    let prompts: Vec<&str> = meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let scorer = ClipScorer::load(&tiny_dir(), &Device::Cpu).unwrap();
    let ids = scorer.tokenize(&prompts).unwrap();
    let want = reference()["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap();
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        want.to_vec2::<u32>().unwrap()
    );
    let embeds = scorer.text_embeds(&prompts).unwrap();
    check("scorer text_embeds", &embeds, &reference()["text_embeds"]);
    let self_cos = cosine(&embeds, &embeds).unwrap().to_vec2::<f32>().unwrap();
    assert!(
        (self_cos[0][0] - 1.0).abs() < 1e-5,
        "embeddings are normalised"
    );
}

fn manifest(path: &Path) -> BTreeMap<String, Vec<usize>> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Built from the published ViT-B/32 config on a recorder, the model asks for exactly the tensors of
/// transformers' `CLIPModel` state dict, with the same shapes.
#[test]
fn vit_b32_architecture_matches_transformers() {
    let dir = fixtures_dir().join("manifests/clip-vit-base-patch32");
    let config = Config::read(&dir.join("config.json")).unwrap();
    assert_eq!(
        config.text_config.eos_token_id, 2,
        "the published config carries the legacy EOS id"
    );
    let w = Weights::recorder();
    ClipModel::from_weights(&w, &config).unwrap();
    let ours = w.requested();
    let theirs = manifest(&dir.join("manifest.json"));
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty(), "tensors we never read: {missing:?}");
    assert!(
        extra.is_empty(),
        "tensors transformers does not have: {extra:?}"
    );
    for (name, shape) in &theirs {
        assert_eq!(&ours[name], shape, "shape of {name}");
    }
    let params: usize = ours
        .values()
        .map(|s| s.iter().product::<usize>().max(1))
        .sum();
    assert_eq!(params, 151_277_313);
}

/// A copy of the tiny model folder in a temporary directory, for breaking.
fn tiny_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_error(dir: &Path) -> String {
    match ClipModel::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_or_missing_files_are_named() {
    let tmp = tiny_copy();
    let weights = tmp.path().join("model.safetensors");

    std::fs::write(&weights, b"not a safetensors file").unwrap();
    let err = load_error(tmp.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a readable safetensors"),
        "{err}"
    );

    std::fs::remove_file(&weights).unwrap();
    let err = load_error(tmp.path());
    assert!(
        err.contains(&tmp.path().display().to_string()) && err.contains("model.safetensors"),
        "{err}"
    );

    let mut tensors =
        candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("visual_projection.weight");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = load_error(tmp.path());
    assert!(
        err.contains("model.safetensors")
            && err.contains("missing tensors: visual_projection.weight"),
        "{err}"
    );

    std::fs::write(
        tmp.path().join("config.json"),
        "{\"vision_config\": {\"hidden_size\": \"wide\"}}",
    )
    .unwrap();
    let err = load_error(tmp.path());
    assert!(
        err.contains("config.json") && err.contains("invalid config"),
        "{err}"
    );

    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let err = load_error(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}

/// A checkpoint of another architecture size is reported with the tensors whose shapes differ.
#[test]
fn config_that_does_not_describe_the_checkpoint_is_reported() {
    let tmp = tiny_copy();
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"projection_dim\": 12", "\"projection_dim\": 16");
    std::fs::write(&path, text).unwrap();
    let err = load_error(tmp.path());
    assert!(
        err.contains("wrong shapes") && err.contains("visual_projection.weight"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let m = ClipModel::load(&tiny_dir(), &Device::Cpu).unwrap();
    let pixels = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(m
        .image_embeds(&pixels)
        .unwrap_err()
        .to_string()
        .contains("[B, 3, 32, 32]"));
    let ids = Tensor::new(&[[49406u32, 60000, 49407]], &Device::Cpu).unwrap();
    assert!(m
        .text_embeds(&ids)
        .unwrap_err()
        .to_string()
        .contains("60000"));
    let long = Tensor::zeros((1, 78), candle_core::DType::U32, &Device::Cpu).unwrap();
    assert!(m.text_embeds(&long).is_err());
}
