//! Builds the report shown in `docs/report.png`: real photos scored as if generated (`persona eval --images`).
//! Each person's "a photo of {} person" folder holds edited copies of their photo (high ID); the "on the beach"
//! folder holds other people's photos (low ID) and a noise picture (no face).
//!
//! `cargo run -p persona-eval --example demo_report -- ../shared/data/faces/celeba ../shared/models fixtures/clip-tiny OUT`

use std::path::{Path, PathBuf};

use image::{imageops, RgbImage};
use persona_eval::eval::{run, EvalConfig};
use persona_eval::protocol::Sampling;
use persona_faces::ModelSearch;
use rand::{Rng, SeedableRng};

fn save(dir: &Path, prompt: &str, images: &[(&str, RgbImage)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("prompt.txt"), prompt)?;
    for (name, img) in images {
        img.save(dir.join(format!("{name}.png")))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [photos, models, clip, out] = args.as_slice() else {
        anyhow::bail!("usage: demo_report PHOTOS MODELS CLIP OUT")
    };
    let people: Vec<RgbImage> = (0..3)
        .map(|k| persona_faces::load_rgb(photos.join(format!("0000{k}.jpg"))))
        .collect::<Result<_, _>>()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for (k, img) in people.iter().enumerate() {
        let name = format!("person{k}");
        std::fs::create_dir_all(out.join("refs").join(&name))?;
        img.save(out.join("refs").join(&name).join("photo.png"))?;
        let (w, h) = img.dimensions();
        let zoom = imageops::resize(
            &imageops::crop_imm(img, w / 10, h / 10, w * 4 / 5, h * 4 / 5).to_image(),
            w,
            h,
            imageops::FilterType::Triangle,
        );
        let edits = [
            ("a-mirror", imageops::flip_horizontal(img)),
            ("b-bright", imageops::colorops::brighten(img, 30)),
            ("c-zoom", zoom),
        ];
        save(
            &out.join("images").join(&name).join("0-photo"),
            "a photo of {} person",
            &edits,
        )?;
        let noise = RgbImage::from_fn(w, h, |_, _| {
            image::Rgb([rng.random(), rng.random(), rng.random()])
        });
        let others = [
            ("a-other", people[(k + 1) % 3].clone()),
            ("b-other", people[(k + 2) % 3].clone()),
            ("c-noise", noise),
        ];
        save(
            &out.join("images").join(&name).join("1-beach"),
            "{} person on the beach",
            &others,
        )?;
    }
    let cfg = EvalConfig {
        model: None,
        variant: None,
        identities: vec![],
        force: false,
        prompts: None,
        sampling: Sampling::default(),
        references: vec![out.join("refs")],
        images: Some(out.join("images")),
        clip: Some(clip.clone()),
        faces: ModelSearch::in_dir(models),
        jpeg: false,
        out: out.join("eval"),
        baseline: None,
    };
    run(&cfg, &indicatif::ProgressBar::hidden())?;
    println!("{}", out.join("eval/report.html").display());
    Ok(())
}
