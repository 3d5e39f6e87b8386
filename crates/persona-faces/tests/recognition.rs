//! Recognition: parity with onnxruntime on committed crops, identity behaviour on real photos,
//! kind detection and the ArcFace (NCHW) path via a tiny generated model.

use crate::common;

use std::collections::HashMap;
use std::sync::OnceLock;

use image::RgbImage;
use persona_faces::recognize::Layout;
use persona_faces::{
    cosine, largest, load_rgb, Detector, Mtcnn, OnnxRecognizer, Recognizer, RecognizerKind,
};

struct Models {
    mtcnn: Mtcnn,
    facenet: OnnxRecognizer,
}

fn models() -> Option<&'static Models> {
    static M: OnceLock<Option<Models>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = common::models()?;
        Some(Models {
            mtcnn: Mtcnn::load_dir(dir.join("mtcnn")).unwrap_or_else(|e| panic!("{e}")),
            facenet: OnnxRecognizer::load(
                dir.join("facenet/facenet_inception_resnet_v1_160.onnx"),
                None,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        })
    })
    .as_ref()
}

fn reference(name: &str) -> HashMap<String, Vec<f32>> {
    let text = std::fs::read_to_string(common::fixture(&format!("reference/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn facenet_matches_onnxruntime_on_the_same_crop() {
    let Some(m) = models() else { return };
    assert_eq!(m.facenet.kind(), RecognizerKind::FaceNet);
    let pre = m.facenet.preprocess();
    assert_eq!(
        (pre.size, pre.layout, pre.mean, pre.std),
        (160, Layout::Nhwc, 127.5, 128.0)
    );
    let refs = reference("facenet.json");
    assert!(refs.len() >= 4);
    for (name, want) in refs {
        let crop = load_rgb(common::fixture(&format!("crops/{name}"))).unwrap();
        let got = m.facenet.embed_crop(&crop).unwrap();
        assert_eq!(got.len(), 512);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "{name}: max |tract - onnxruntime| = {d}");
        let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

fn shifted(img: &RgbImage, dx: i64, dy: i64) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let (sx, sy) = (x as i64 - dx, y as i64 - dy);
        if sx < 0 || sy < 0 || sx >= img.width() as i64 || sy >= img.height() as i64 {
            image::Rgb([0, 0, 0])
        } else {
            *img.get_pixel(sx as u32, sy as u32)
        }
    })
}

/// Same face flipped or shifted a few pixels: ≥ 0.85. Different people: ≤ 0.5 on average.
#[test]
fn facenet_same_person_high_different_people_low() {
    let (Some(m), Some(photos)) = (models(), common::identity_photos()) else {
        return;
    };
    let mut embeddings = Vec::new();
    let mut worst_same = 1.0f32;
    for (key, path) in &photos {
        let img = load_rgb(path).unwrap();
        let face = largest(&m.mtcnn.detect(&img).unwrap()).unwrap();
        let e = m.facenet.embed(&img, &face).unwrap();
        // Variants are re-detected: what a caller does with a new photo of the same person.
        for (what, variant) in [
            ("flip", image::imageops::flip_horizontal(&img)),
            ("shift", shifted(&img, 7, -5)),
        ] {
            let f = largest(&m.mtcnn.detect(&variant).unwrap()).unwrap();
            let c = cosine(&e, &m.facenet.embed(&variant, &f).unwrap());
            assert!(c >= 0.85, "{key} vs its {what}: cosine {c}");
            worst_same = worst_same.min(c);
        }
        embeddings.push(e);
    }
    let mut sum = 0.0;
    let mut n = 0;
    for i in 0..embeddings.len() {
        for j in i + 1..embeddings.len() {
            sum += cosine(&embeddings[i], &embeddings[j]);
            n += 1;
        }
    }
    let mean = sum / n as f32;
    eprintln!(
        "FaceNet: worst same-face cosine {worst_same:.3}, mean different-people cosine {mean:.3}"
    );
    assert!(mean <= 0.5, "mean cosine between different people {mean}");
    assert!(mean < worst_same - 0.3);
}

#[test]
fn arcface_layout_model_matches_onnxruntime_and_kind_is_recognised() {
    let path = common::fixture("tiny_arcface.onnx");
    let r = OnnxRecognizer::load(&path, None).unwrap();
    assert_eq!(r.kind(), RecognizerKind::ArcFace);
    let pre = *r.preprocess();
    assert_eq!(
        (pre.size, pre.layout, pre.mean, pre.std),
        (112, Layout::Nchw, 127.5, 127.5)
    );
    for (name, want) in reference("tiny_arcface.json") {
        let crop = load_rgb(common::fixture(&format!("crops/{name}"))).unwrap();
        let got = r.embed_crop(&crop).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "{name}: max diff {d}");
    }
    // Overriding the kind keeps the graph's layout and size but switches the preprocessing.
    let forced = OnnxRecognizer::load(&path, Some(RecognizerKind::FaceNet)).unwrap();
    assert_eq!(forced.kind(), RecognizerKind::FaceNet);
    assert_eq!(
        (
            forced.preprocess().layout,
            forced.preprocess().size,
            forced.preprocess().std
        ),
        (Layout::Nchw, 112, 128.0)
    );
}

#[test]
fn non_recognizer_graph_is_a_clear_error() {
    let err = OnnxRecognizer::load(common::fixture("tiny_scrfd.onnx"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny_scrfd.onnx") && err.contains("recogniser"),
        "{err}"
    );
    let err = OnnxRecognizer::load(common::fixture("does_not_exist.onnx"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does_not_exist.onnx") && err.contains("does not exist"),
        "{err}"
    );
}

/// The API training and evaluation use: models found by lookup, largest face, crop, embedding.
#[test]
fn analyzer_from_model_lookup_end_to_end() {
    let Some(dir) = common::models() else { return };
    let analyzer =
        persona_faces::FaceAnalyzer::from_search(&persona_faces::ModelSearch::in_dir(&dir))
            .unwrap();
    // The shared folder has MTCNN and FaceNet only.
    assert_eq!(analyzer.detector().name(), "mtcnn");
    assert_eq!(analyzer.recognizer().kind(), RecognizerKind::FaceNet);
    let hopper = load_rgb(common::fixture("photos/grace_hopper.jpg")).unwrap();
    let (face, e1) = analyzer.embed_largest(&hopper).unwrap().expect("face");
    let crop = analyzer.aligned_crop(&hopper, &face, 256).unwrap();
    assert_eq!(crop.dimensions(), (256, 256));
    // The EXIF-rotated copy is the same photo at half the resolution.
    let rotated = load_rgb(common::fixture("exif_rotated.jpg")).unwrap();
    let (_, e2) = analyzer.embed_largest(&rotated).unwrap().expect("face");
    let astronaut = load_rgb(common::fixture("photos/astronaut.jpg")).unwrap();
    let (_, e3) = analyzer.embed_largest(&astronaut).unwrap().expect("face");
    assert!(cosine(&e1, &e2) > 0.85, "{}", cosine(&e1, &e2));
    assert!(cosine(&e1, &e3) < 0.5, "{}", cosine(&e1, &e3));
    let coffee = load_rgb(common::fixture("photos/coffee.jpg")).unwrap();
    assert!(analyzer.largest_face(&coffee).unwrap().is_none());
    assert!(analyzer.embed_largest(&coffee).unwrap().is_none());
}

/// Whole-image mode (`--detector none`) through the model lookup: one face per image, and the
/// embedding is the recogniser's embedding of the plain resize of the image (its centred square).
#[test]
fn whole_image_mode_embeds_the_resized_image() {
    use persona_faces::{FaceAnalyzer, ModelSearch, WholeImage};
    let search = ModelSearch {
        detector: Some("none".into()),
        recognizer: Some(common::fixture("tiny_arcface.onnx")),
        ..ModelSearch::default()
    };
    let analyzer = FaceAnalyzer::from_search(&search).unwrap();
    assert_eq!(analyzer.detector().name(), "none (whole image)");
    assert_eq!(analyzer.recognizer().kind(), RecognizerKind::ArcFace);
    for (w, h) in [(64, 64), (96, 64)] {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x ^ y) * 8) as u8])
        });
        let faces = analyzer.detect(&img).unwrap();
        assert_eq!(faces.len(), 1);
        let (face, e) = analyzer
            .embed_largest(&img)
            .unwrap()
            .expect("always a face");
        assert_eq!(face, faces[0]);
        let resized = WholeImage::crop(&img, 112).unwrap();
        assert_eq!(analyzer.aligned_crop(&img, &face, 112).unwrap(), resized);
        let want = analyzer.recognizer().embed_crop(&resized).unwrap();
        assert!(max_abs_diff(&e, &want) <= 1e-6, "{w}x{h}");
    }
    // A recogniser loaded outside whole-image mode keeps its aligned crop.
    let normal = ModelSearch {
        recognizer: search.recognizer.clone(),
        ..ModelSearch::default()
    };
    assert_eq!(
        normal.load_recognizer().unwrap().preprocess().crop,
        persona_faces::CropStyle::Aligned { zoom: 1.0 }
    );
}
