//! CLIP preprocessing against transformers' `CLIPImageProcessorPil` (openai/clip-vit-base-patch32 settings) on the
//! photos of `fixtures/faces/photos` and sizes derived from them (`fixtures/reference/clip/preprocess.*`, made by
//! `tools/fixtures/clip/make_clip.py`).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use image::RgbImage;
use persona_diffusion::testing::{fixtures_dir, load_reference};
use persona_eval::clip::Preprocessor;

fn cases() -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(fixtures_dir().join("reference/clip/preprocess.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

fn rgb(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::from_raw(
        w as u32,
        h as u32,
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    )
    .unwrap()
}

/// Largest per-sample difference and number of differing samples.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y));
    d.fold((0, 0), |(max, n), d| (max.max(d), n + usize::from(d > 0)))
}

fn reference() -> HashMap<String, Tensor> {
    load_reference("reference/clip/preprocess.safetensors").unwrap()
}

/// Resize + crop of the pixels a case starts from: stored u8 pixels, or a photo file decoded by `image`.
fn crop_of(case: &serde_json::Value, r: &HashMap<String, Tensor>) -> RgbImage {
    let source = case["input"].as_str().unwrap();
    let input = match r.get(source) {
        Some(t) => rgb(t),
        None => image::open(fixtures_dir().join(source)).unwrap().to_rgb8(),
    };
    Preprocessor::openai(224).resize_and_crop(&input).unwrap()
}

/// From the same decoded pixels (stored, or a PNG), resize + crop equals Pillow's bytes exactly: down- and
/// upscaling, landscape and portrait, odd crop offsets.
#[test]
fn resize_and_crop_match_pillow_exactly() {
    let r = reference();
    for case in cases()
        .iter()
        .filter(|c| !c["input"].as_str().unwrap().ends_with(".jpg"))
    {
        let name = case["name"].as_str().unwrap();
        let (max, n) = diff(&crop_of(case, &r), &rgb(&r[&format!("{name}.crop")]));
        eprintln!("{name}: max difference {max}/255 in {n} samples");
        assert_eq!((max, n), (0, 0), "{name}");
    }
}

/// Rescale and normalise reproduce numpy's f32 arithmetic: the processor's output exactly.
#[test]
fn pixel_values_match_transformers() {
    let r = reference();
    let ours = Preprocessor::openai(224)
        .pixel_values(&rgb(&r["square_256.input"]), &Device::Cpu)
        .unwrap();
    let want = &r["square_256.pixel_values"];
    let err = (ours - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("pixel_values: max abs difference {err:e}");
    assert!(err <= 1e-6, "{err}");
}

/// End to end from JPEG files. The preprocessing is exact, but the decoders are not: `image`'s (zune-jpeg) and
/// Pillow's (libjpeg-turbo) differ by a few levels on some samples of these 4:2:0 photos (IDCT and chroma
/// upsampling rounding). Measured: at most 3/255 after resizing, 0.1–0.25/255 on average; bounded here so that a
/// change in either shows up.
#[test]
fn jpeg_photos_differ_only_by_the_decoder() {
    let r = reference();
    for case in cases()
        .iter()
        .filter(|c| c["input"].as_str().unwrap().ends_with(".jpg"))
    {
        let name = case["name"].as_str().unwrap();
        let (ours, want) = (crop_of(case, &r), rgb(&r[&format!("{name}.crop")]));
        let (max, n) = diff(&ours, &want);
        let total: f64 = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum();
        let mean = total / ours.as_raw().len() as f64;
        eprintln!(
            "{name} from JPEG: max difference {max}/255, mean {mean:.3}/255, {n} of {} samples differ",
            224 * 224 * 3
        );
        assert!(max <= 4 && mean <= 0.4, "{name}: max {max}, mean {mean}");
    }
}

#[test]
fn empty_image_is_an_error() {
    assert!(Preprocessor::openai(224)
        .resize_and_crop(&RgbImage::new(0, 10))
        .is_err());
}
