//! `--dtype bf16`: the tiny pipelines' frozen models in bf16 against PyTorch's bf16 (`tools/fixtures/bf16.py`),
//! on the CPU, measured in units of PyTorch's own bf16 error `e = ‖torch_bf16 − torch_f32‖ / ‖torch_f32‖`.
//! persona's bf16 should be as far from f32 as PyTorch's is (limit 1.5 e; seen 0.98–1.23 e), and two bf16
//! implementations that round at different points (accumulation order, where a cast happens) differ from
//! each other by about √2 e if their roundings are independent (limit 2 e; seen 0.96–1.43 e). Norm
//! statistics left in bf16, for one, give 15 e.

use candle_core::{DType, Device, Tensor};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::nn::Condition;
use persona_diffusion::pipeline::{GenerateParams, LoadOptions, StableDiffusion};
use persona_diffusion::schedulers::SchedulerKind;
use persona_diffusion::testing::gradcheck::norm_error;
use persona_diffusion::testing::{fixtures_dir, load_reference};

fn load(pipeline: &str) -> StableDiffusion {
    let opts = LoadOptions {
        variant: None,
        device: Device::Cpu,
        dtype: DType::BF16,
    };
    StableDiffusion::load(fixtures_dir().join(pipeline).to_str().unwrap(), &opts).unwrap()
}

/// Checks persona's bf16 output `got` against PyTorch's bf16 `want` and f32 `want_f32`.
fn check(what: &str, got: &Tensor, want: &Tensor, want_f32: &Tensor) {
    assert_eq!(
        got.dtype(),
        DType::F32,
        "{what}: a model must answer in f32"
    );
    let torch_own = norm_error(want, want_f32).unwrap();
    let vs_bf16 = norm_error(got, want).unwrap();
    let vs_f32 = norm_error(got, want_f32).unwrap();
    eprintln!("{what}: vs torch bf16 {vs_bf16:.2e}, vs f32 {vs_f32:.2e} (torch's own bf16 error {torch_own:.2e})");
    assert!(
        vs_bf16 <= 2.0 * torch_own,
        "{what}: {vs_bf16:.2e} from torch's bf16 (limit {:.2e})",
        2.0 * torch_own
    );
    assert!(
        vs_f32 <= 1.5 * torch_own,
        "{what}: {vs_f32:.2e} from f32 (limit {:.2e})",
        1.5 * torch_own
    );
}

fn run(pipeline: &str) {
    let sd = load(pipeline);
    let r = load_reference(&format!("reference/bf16-{pipeline}.safetensors")).unwrap();
    let hidden = sd
        .text_encoder
        .forward(&r["text.ids"], Output::Last)
        .unwrap();
    check(
        &format!("{pipeline} text encoder"),
        &hidden,
        &r["text.hidden"],
        &r["text.hidden_f32"],
    );

    let cond = Condition::new(r["unet.cond"].clone());
    let out = sd
        .unet
        .forward(&r["unet.sample"], &r["unet.t"], &cond, None)
        .unwrap();
    check(
        &format!("{pipeline} UNet"),
        &out,
        &r["unet.out"],
        &r["unet.out_f32"],
    );

    let decoded = sd.vae.decode(&r["vae.latents"]).unwrap();
    check(
        &format!("{pipeline} VAE decode"),
        &decoded,
        &r["vae.decoded"],
        &r["vae.decoded_f32"],
    );

    let latents = r["gen.latents"].clone();
    let params = GenerateParams {
        prompt: "a photo of a face of a person".into(),
        negative_prompt: String::new(),
        steps: 4,
        guidance: 7.5,
        scheduler: Some(SchedulerKind::Ddim),
        height: 32,
        width: 32,
        seed: 0,
        num_images: 1,
        batch_size: 1,
        latents: Some(latents),
        text_output: Output::Last,
        tokens: Vec::new(),
    };
    let image = sd
        .generate(&params, &mut |_| {})
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap();
    check(
        &format!("{pipeline} DDIM generation"),
        &image,
        &r["gen.image"],
        &r["gen.image_f32"],
    );
}

#[test]
fn sd2_tiny_bf16_matches_pytorch() {
    run("sd2-tiny");
}

#[test]
fn sd1_tiny_bf16_matches_pytorch() {
    run("sd1-tiny");
}
