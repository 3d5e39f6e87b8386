//! The real SD 1.5, SD 2.1-base and SDXL base 1.0 architectures: built from their published configs on a recording weight
//! source (names and shapes only, nothing allocated), our models ask for exactly the tensors of diffusers' /
//! transformers' state dicts (`fixtures/manifests`, made by `tools/fixtures/manifests.py`), with the same shapes.

use std::collections::BTreeMap;
use std::path::Path;

use persona_diffusion::models::{
    clip_text, unet, vae, AutoencoderKL, ClipTextModel, ClipTextModelWithProjection,
    UNet2DConditionModel,
};
use persona_diffusion::nn::Weights;
use persona_diffusion::testing::fixtures_dir;

fn manifest(dir: &Path) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let m: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    // Hub text encoders prefix every name with `text_model.`; the recorder sees the unprefixed layout.
    m.into_iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("text_model.")
                    .map(str::to_string)
                    .unwrap_or(k),
                v,
            )
        })
        .collect()
}

fn compare(model: &str, component: &str, build: impl FnOnce(&Weights, &Path)) {
    let dir = fixtures_dir().join("manifests").join(model).join(component);
    let w = Weights::recorder();
    build(&w, &dir.join("config.json"));
    let ours = w.requested();
    let theirs = manifest(&dir);
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{model}/{component}: tensors we never read: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{model}/{component}: tensors diffusers does not have: {extra:?}"
    );
    for (name, shape) in &theirs {
        assert_eq!(&ours[name], shape, "{model}/{component}: shape of {name}");
    }
    let params: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
    eprintln!(
        "{model}/{component}: {} tensors, {params} parameters",
        ours.len()
    );
}

fn all_components(model: &str) {
    compare(model, "text_encoder", |w, c| {
        ClipTextModel::load(w, &clip_text::Config::read(c).unwrap()).unwrap();
    });
    compare(model, "unet", |w, c| {
        UNet2DConditionModel::load(w, &unet::Config::read(c).unwrap()).unwrap();
    });
    compare(model, "vae", |w, c| {
        AutoencoderKL::load(w, &vae::Config::read(c).unwrap()).unwrap();
    });
}

#[test]
fn sd21_base_architecture_matches_diffusers() {
    all_components("sd21-base");
}

#[test]
fn sd15_architecture_matches_diffusers() {
    all_components("sd15");
}

#[test]
fn sdxl_base_architecture_matches_diffusers() {
    all_components("sdxl-base");
    compare("sdxl-base", "text_encoder_2", |w, c| {
        ClipTextModelWithProjection::load(
            w,
            &clip_text::Config::read(c).unwrap(),
            &clip_text::ProjectionConfig::read(c).unwrap(),
        )
        .unwrap();
    });
}
