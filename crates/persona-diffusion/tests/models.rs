//! Parity of the text encoder, UNet and VAE with diffusers / transformers on the tiny fixture pipelines
//! (reference outputs made by `tools/fixtures`, see `fixtures/README.md`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use persona_diffusion::loading::component_files;
use persona_diffusion::models::clip_text::{self, Output};
use persona_diffusion::models::{unet, vae, AutoencoderKL, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::{Condition, Weights};
use persona_diffusion::testing::{fixtures_dir, load_reference, rel_error};

const TOL: f64 = 1e-4;

fn weights(dir: &Path, stem: &str, variant: Option<&str>) -> Weights {
    Weights::from_files(&component_files(dir, stem, variant).unwrap(), &Device::Cpu).unwrap()
}

fn text_encoder(pipeline: &str) -> ClipTextModel {
    let dir = fixtures_dir().join(pipeline).join("text_encoder");
    let variant = (pipeline == "sd2-unseen").then_some("fp16");
    let w = weights(&dir, "model", variant);
    let m = ClipTextModel::load(
        &w,
        &clip_text::Config::read(&dir.join("config.json")).unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    m
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let err = rel_error(got, want).unwrap();
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= TOL, "{name}: relative error {err:.2e} > {TOL:.0e}");
}

#[test]
fn text_encoder_matches_transformers() {
    for p in ["sd2-tiny", "sd1-tiny", "sd2-unseen"] {
        let r = load_reference(&format!("reference/{p}/text_encoder.safetensors")).unwrap();
        let m = text_encoder(p);
        let ids = &r["input_ids"];
        check(
            &format!("{p} last_hidden_state"),
            &m.forward(ids, Output::Last).unwrap(),
            &r["last_hidden_state"],
        );
        check(
            &format!("{p} clip_skip_1"),
            &m.forward(ids, Output::Skip(1)).unwrap(),
            &r["clip_skip_1"],
        );
        let from_embeds = m.forward_embeds(&r["inputs_embeds"], Output::Last).unwrap();
        check(
            &format!("{p} inputs_embeds"),
            &from_embeds,
            &r["inputs_embeds_out"],
        );
    }
}

fn unet_model(pipeline: &str) -> UNet2DConditionModel {
    let dir = fixtures_dir().join(pipeline).join("unet");
    let variant = (pipeline == "sd2-unseen").then_some("fp16");
    let w = weights(&dir, "diffusion_pytorch_model", variant);
    let m = UNet2DConditionModel::load(&w, &unet::Config::read(&dir.join("config.json")).unwrap())
        .unwrap();
    w.finish().unwrap();
    m
}

#[test]
fn unet_matches_diffusers() {
    for p in ["sd2-tiny", "sd1-tiny", "sd2-unseen"] {
        let r = load_reference(&format!("reference/{p}/unet.safetensors")).unwrap();
        let m = unet_model(p);
        let cond = Condition::new(r["encoder_hidden_states"].clone());
        let out = m
            .forward(&r["sample"], &r["timestep"], &cond, None)
            .unwrap();
        check(&format!("{p} unet"), &out, &r["out"]);
    }
}

#[test]
fn vae_matches_diffusers() {
    for p in ["sd2-tiny", "sd1-tiny", "sd2-unseen"] {
        let r = load_reference(&format!("reference/{p}/vae.safetensors")).unwrap();
        let dir = fixtures_dir().join(p).join("vae");
        let variant = (p == "sd2-unseen").then_some("fp16");
        let w = weights(&dir, "diffusion_pytorch_model", variant);
        let m =
            AutoencoderKL::load(&w, &vae::Config::read(&dir.join("config.json")).unwrap()).unwrap();
        w.finish().unwrap();
        let post = m.encode(&r["image"]).unwrap();
        check(
            &format!("{p} posterior mean"),
            &post.mean,
            &r["posterior_mean"],
        );
        check(
            &format!("{p} posterior logvar"),
            &post.logvar,
            &r["posterior_logvar"],
        );
        check(
            &format!("{p} posterior sample"),
            &post.sample(&r["posterior_noise"]).unwrap(),
            &r["posterior_sample"],
        );
        check(
            &format!("{p} decode"),
            &m.decode(&r["latents"]).unwrap(),
            &r["decoded"],
        );
    }
}

/// The checks above must be able to fail: a tanh-approximated GELU in place of erf GELU is caught.
#[test]
fn parity_check_detects_a_changed_activation() {
    let r = load_reference("reference/sd2-tiny/text_encoder.safetensors").unwrap();
    let dir = fixtures_dir().join("sd2-tiny/text_encoder");
    let mut config = clip_text::Config::read(&dir.join("config.json")).unwrap();
    config.hidden_act = persona_diffusion::nn::Activation::QuickGelu;
    let m = ClipTextModel::load(&weights(&dir, "model", None), &config).unwrap();
    let out = m.forward(&r["input_ids"], Output::Last).unwrap();
    assert!(rel_error(&out, &r["last_hidden_state"]).unwrap() > TOL);
    assert_eq!(out.dtype(), DType::F32);
}
