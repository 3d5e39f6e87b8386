//! Issue #13, item 5 and the photo side of item 4: `faces embed` does not overwrite, and `eval --images`
//! explains the layouts it takes (docs/reliability.md). Whole-image mode and the tiny recogniser: no `../shared`.

use std::path::Path;

use crate::common::persona;
use crate::reliability_cli::{one_error, s};

/// A small image with a flat colour (whole-image mode needs no real face).
fn plain_png(path: &Path, shade: u8) {
    image::RgbImage::from_pixel(24, 24, image::Rgb([shade, 90, 140]))
        .save(path)
        .unwrap();
}

/// `faces embed` onto an existing file is refused without `--overwrite` and leaves it as it was.
#[test]
fn reliability_faces_embed_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    plain_png(&img, 40);
    let out = tmp.path().join("emb.safetensors");
    let rec = persona_diffusion::testing::fixtures_dir().join("faces/tiny_arcface.onnx");
    let embed = |extra: &[&str]| {
        let base = ["faces", "embed", s(&img), "--detector", "none"];
        let tail = ["--recognizer", s(&rec), "--out", s(&out)];
        persona(&[&base[..], &tail[..], extra].concat())
    };
    assert!(embed(&[]).status.success());
    let before = std::fs::read(&out).unwrap();
    let err = one_error(&embed(&[]));
    assert!(
        err.contains("emb.safetensors") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), before, "the file was touched");
    assert!(embed(&["--overwrite"]).status.success());
}

/// `eval --images` on a folder that follows neither layout names the folder and both layouts.
#[test]
fn reliability_eval_images_layout_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let refs = tmp.path().join("refs");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&refs).unwrap();
    plain_png(&images.join("0.png"), 10); // images directly in the folder: no prompt folder
    plain_png(&refs.join("r.png"), 200);
    let rec = persona_diffusion::testing::fixtures_dir().join("faces/tiny_arcface.onnx");
    let out = tmp.path().join("eval");
    let clip = persona_diffusion::testing::fixtures_dir().join("clip-tiny");
    let o = persona(&[
        "eval",
        "--images",
        s(&images),
        "--clip",
        s(&clip),
        "--references",
        s(&refs),
        "--detector",
        "none",
        "--recognizer",
        s(&rec),
        "--out",
        s(&out),
    ]);
    let err = one_error(&o);
    assert!(
        err.contains(s(&images))
            && err.contains("DIR/<prompt>/")
            && err.contains("DIR/<identity>/<prompt>/"),
        "{err}"
    );
}
