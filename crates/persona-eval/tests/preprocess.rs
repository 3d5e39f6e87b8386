//! CLIP preprocessing against transformers' `CLIPImageProcessorPil` (openai/clip-vit-base-patch32 settings) on real
//! photos and derived sizes (`fixtures/reference/clip/preprocess.*`, made by `tools/fixtures/clip/make_clip.py`).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use image::RgbImage;
use persona_diffusion::testing::{fixtures_dir, load_reference};
use persona_eval::clip::Preprocessor;

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures_dir().join("reference/clip/preprocess.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

fn rgb(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::from_raw(w as u32, h as u32, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

/// Largest per-sample difference and number of differing samples.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y));
    d.fold((0, 0), |(max, n), d| (max.max(d), n + usize::from(d > 0)))
}

fn reference() -> HashMap<String, Tensor> {
    load_reference("reference/clip/preprocess.safetensors").unwrap()
}

/// From the same decoded pixels, resize + crop equals Pillow's bytes exactly (down- and upscaling, landscape,
/// portrait, odd crop offsets).
#[test]
fn resize_and_crop_match_pillow_exactly() {
    let r = reference();
    let p = Preprocessor::openai(224);
    for case in cases().iter().filter(|c| c["input"].as_str().unwrap().ends_with(".input")) {
        let name = case["name"].as_str().unwrap();
        let ours = p.resize_and_crop(&rgb(&r[&format!("{name}.input")])).unwrap();
        let (max, n) = diff(&ours, &rgb(&r[&format!("{name}.crop")]));
        eprintln!("{name}: max difference {max}/255 in {n} samples");
        assert_eq!((max, n), (0, 0), "{name}");
    }
}

/// Rescale and normalise reproduce numpy's f32 arithmetic: the processor's output exactly.
#[test]
fn pixel_values_match_transformers() {
    let r = reference();
    let ours = Preprocessor::openai(224).pixel_values(&rgb(&r["celeba_00000.input"]), &Device::Cpu).unwrap();
    let want = &r["celeba_00000.pixel_values"];
    let err = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("pixel_values: max abs difference {err:e}");
    assert!(err <= 1e-6, "{err}");
}

/// End to end from JPEG files. The preprocessing is exact, but the decoders are not: `image`'s (zune-jpeg) and
/// Pillow's (libjpeg-turbo) differ by a few levels on some samples of 4:2:0 photos (IDCT and chroma upsampling
/// rounding). Measured on these three photos: at most 4/255 after decoding and 3–4/255 after resizing, 0.17–0.24/255 on
/// average; bounded here so that a change in either shows up.
#[test]
fn jpeg_photos_differ_only_by_the_decoder() {
    let r = reference();
    let p = Preprocessor::openai(224);
    let files = [
        ("celeba_00000", fixtures_dir().join("reference/clip/celeba_00000.jpg")),
        ("coffee", fixtures_dir().join("faces/photos/coffee.jpg")),
        ("grace_hopper", fixtures_dir().join("faces/photos/grace_hopper.jpg")),
    ];
    for (name, path) in files {
        let decoded = image::open(&path).unwrap().to_rgb8();
        let ours = p.resize_and_crop(&decoded).unwrap();
        let want = rgb(&r[&format!("{name}.crop")]);
        let (max, n) = diff(&ours, &want);
        let mean = ours.as_raw().iter().zip(want.as_raw()).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
            / ours.as_raw().len() as f64;
        eprintln!(
            "{name} from JPEG: max difference {max}/255, mean {mean:.3}/255, {n} of {} samples differ",
            224 * 224 * 3
        );
        assert!(max <= 4 && mean <= 0.4, "{name}: max {max}, mean {mean}");
    }
    let decoded = image::open(fixtures_dir().join("reference/clip/celeba_00000.jpg")).unwrap().to_rgb8();
    let (max, n) = diff(&decoded, &rgb(&r["celeba_00000.input"]));
    eprintln!("celeba_00000 decoding alone: max difference {max}/255 in {n} samples");
    assert!(max <= 4);
}

#[test]
fn empty_image_is_an_error() {
    assert!(Preprocessor::openai(224).resize_and_crop(&RgbImage::new(0, 10)).is_err());
}
