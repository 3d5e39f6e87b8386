//! How FaceNet's crop style affects identity separation on the shared test photos; the numbers
//! behind the default crop (docs/faces.md, "FaceNet crop").
//!
//! `cargo run -p persona-faces --example facenet_crop_study [-- MODELS_DIR PHOTOS_DIR]`
//! (defaults: ../shared/models, ../shared/data/faces).

use std::path::PathBuf;

use persona_faces::{
    cosine, largest, load_rgb, CropStyle, Detector, Mtcnn, OnnxRecognizer, Recognizer,
};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = std::env::args().skip(1);
    let models = args
        .next()
        .map(PathBuf::from)
        .unwrap_or(root.join("../shared/models"));
    let photos_dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or(root.join("../shared/data/faces"));
    let mtcnn = Mtcnn::load_dir(models.join("mtcnn"))?;
    let mut photos = Vec::new();
    for set in ["celeba", "stylegan3"] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(photos_dir.join(set))?
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        photos.extend(v);
    }
    // Detect once per image and variant.
    let mut items = Vec::new();
    for p in &photos {
        let img = load_rgb(p)?;
        let flip = image::imageops::flip_horizontal(&img);
        let faces: Vec<_> = [&img, &flip]
            .iter()
            .map(|i| largest(&mtcnn.detect(i).unwrap()).expect("face"))
            .collect();
        items.push((img, flip, faces));
    }
    let styles = [
        ("aligned zoom 1.0", CropStyle::Aligned { zoom: 1.0 }),
        ("aligned zoom 0.9", CropStyle::Aligned { zoom: 0.9 }),
        ("aligned zoom 0.8", CropStyle::Aligned { zoom: 0.8 }),
        ("aligned zoom 0.7", CropStyle::Aligned { zoom: 0.7 }),
        ("box margin 0.1", CropStyle::BoxMargin { margin: 0.1 }),
        ("box margin 0.2", CropStyle::BoxMargin { margin: 0.2 }),
    ];
    println!("| crop | same face flipped: min / mean | different people: mean / max |");
    println!("|---|---|---|");
    for (name, style) in styles {
        let rec = OnnxRecognizer::load(
            models.join("facenet/facenet_inception_resnet_v1_160.onnx"),
            None,
        )?
        .with_crop(style);
        let mut emb = Vec::new();
        let mut same = Vec::new();
        for (img, flip, faces) in &items {
            let e = rec.embed(img, &faces[0])?;
            same.push(cosine(&e, &rec.embed(flip, &faces[1])?));
            emb.push(e);
        }
        let mut diff = Vec::new();
        for i in 0..emb.len() {
            for j in i + 1..emb.len() {
                diff.push(cosine(&emb[i], &emb[j]));
            }
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let min = same.iter().copied().fold(f32::MAX, f32::min);
        let max = diff.iter().copied().fold(f32::MIN, f32::max);
        println!(
            "| {name} | {min:.3} / {:.3} | {:.3} / {max:.3} |",
            mean(&same),
            mean(&diff)
        );
    }
    Ok(())
}
