//! SCRFD decoding against insightface's algorithm (restated in tools/faces/make_tiny_models.py)
//! on a tiny generated SCRFD-shaped graph.

use crate::common;

use persona_faces::{load_rgb, Detector, Scrfd};
use serde::Deserialize;

#[derive(Deserialize)]
struct RefDet {
    bbox: [f32; 4],
    score: f32,
    landmarks: [[f32; 2]; 5],
}

#[derive(Deserialize)]
struct Reference {
    image: String,
    detections: Vec<RefDet>,
}

#[test]
fn tiny_scrfd_decodes_like_insightface() {
    let r: Reference = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("reference/scrfd.json")).unwrap(),
    )
    .unwrap();
    assert!(
        r.detections.len() > 5,
        "reference should exercise NMS with several detections"
    );
    let det = Scrfd::load(common::fixture("tiny_scrfd.onnx")).unwrap();
    assert_eq!(det.input_size(), (640, 640));
    let img = load_rgb(common::fixture(&r.image)).unwrap();
    let got = det.detect(&img).unwrap();
    assert_eq!(got.len(), r.detections.len());
    // The image has no tied scores (checked by the generator), so the kept set is unique.
    for want in &r.detections {
        let g = got
            .iter()
            .find(|g| {
                g.bbox
                    .iter()
                    .zip(want.bbox)
                    .all(|(a, b)| (a - b).abs() < 1e-3)
            })
            .unwrap_or_else(|| panic!("no detection at {:?}", want.bbox));
        assert!(
            (g.score - want.score).abs() < 1e-5,
            "{} vs {}",
            g.score,
            want.score
        );
        for (p, q) in g.landmarks.iter().zip(&want.landmarks) {
            assert!(
                (p[0] - q[0]).abs() < 1e-3 && (p[1] - q[1]).abs() < 1e-3,
                "{p:?} vs {q:?}"
            );
        }
    }
    // Scores come out best first.
    assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn scrfd_rejects_a_graph_of_another_shape() {
    let err = Scrfd::load(common::fixture("tiny_arcface.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny_arcface.onnx") && err.contains("SCRFD"),
        "{err}"
    );
}
