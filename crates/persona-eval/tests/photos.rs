//! The metrics on real photos (`../shared/data/faces`), treated as "generated" images: augmented copies of a
//! person's photo must score above every other person, faces must always be detected and noise never, and
//! `persona eval --images` must produce a report that loads in Chromium without errors.

use crate::common;

use std::path::{Path, PathBuf};

use image::{imageops, RgbImage};
use indicatif::ProgressBar;
use persona_eval::eval::{run, EvalConfig};
use persona_eval::protocol::Sampling;
use persona_eval::score::{jpeg_round_trip, Scorer};
use persona_faces::ModelSearch;
use rand::{Rng, SeedableRng};

const PEOPLE: usize = 5;

/// Mild edits a generated image of the same person could show: mirror, brightness, zoom, JPEG.
fn augmentations(img: &RgbImage) -> Vec<RgbImage> {
    let (w, h) = img.dimensions();
    let zoom = imageops::resize(
        &imageops::crop_imm(img, w / 20, h / 20, w * 9 / 10, h * 9 / 10).to_image(),
        w,
        h,
        imageops::FilterType::Triangle,
    );
    vec![
        imageops::flip_horizontal(img),
        imageops::colorops::brighten(img, 25),
        zoom,
        jpeg_round_trip(img).unwrap(),
    ]
}

fn noise(seed: u64) -> RgbImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    RgbImage::from_fn(256, 256, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    })
}

fn save_all(dir: &Path, prompt: &str, images: &[RgbImage]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("prompt.txt"), prompt).unwrap();
    for (i, img) in images.iter().enumerate() {
        img.save(dir.join(format!("{i:02}.png"))).unwrap();
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    models: PathBuf,
    originals: Vec<RgbImage>,
}

/// refs/<person>/photo.jpg and images/<person>/{00-photo (augmented), 01-noise}/.
fn setup() -> Option<Setup> {
    let models = common::shared("models")?;
    let photos = common::photos("celeba")?;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut originals = Vec::new();
    for (k, p) in photos.iter().take(PEOPLE).enumerate() {
        let name = format!("person{k}");
        common::folder_of(&root.join("refs").join(&name), &[p]);
        let img = persona_faces::load_rgb(p).unwrap();
        save_all(
            &root.join("images").join(&name).join("00-photo"),
            "a photo of {} person",
            &augmentations(&img),
        );
        save_all(
            &root.join("images").join(&name).join("01-noise"),
            "random noise",
            &[noise(k as u64), noise(100 + k as u64)],
        );
        originals.push(img);
    }
    Some(Setup {
        _tmp: tmp,
        root,
        models,
        originals,
    })
}

#[test]
fn id_ranks_same_person_first_and_detection_separates_faces_from_noise() {
    let Some(s) = setup() else { return };
    let cfg = EvalConfig {
        model: None,
        variant: None,
        identities: vec![],
        force: false,
        prompts: None,
        sampling: Sampling::default(),
        references: vec![s.root.join("refs")],
        images: Some(s.root.join("images")),
        clip: Some(common::root().join("fixtures/clip-tiny")),
        faces: ModelSearch::in_dir(&s.models),
        jpeg: false,
        out: s.root.join("out"),
        baseline: None,
    };
    let results = run(&cfg, &ProgressBar::hidden()).unwrap();
    let photo = results
        .prompts
        .iter()
        .find(|p| p.prompt_index == 0)
        .unwrap();
    let noise = results
        .prompts
        .iter()
        .find(|p| p.prompt_index == 1)
        .unwrap();
    eprintln!(
        "photos: detection {} ID {:?}; noise: detection {}",
        photo.stats.detection_rate, photo.stats.id, noise.stats.detection_rate
    );
    assert_eq!(
        (photo.stats.images, photo.stats.detection_rate),
        (PEOPLE * 4, 1.0)
    );
    assert_eq!(
        (
            noise.stats.images,
            noise.stats.detection_rate,
            noise.stats.id
        ),
        (PEOPLE * 2, 0.0, None)
    );
    assert!(
        results.images.iter().all(|r| r.prompt_score.is_some()),
        "a CLIP model was given: every image has a prompt score"
    );
    for f in ["results.json", "results.csv", "report.html"] {
        assert!(cfg.out.join(f).is_file(), "{f} written");
    }

    // Every person's augmented photos against every reference: with several references each is matched with
    // its best face (the double-prompt rule), so each photo is detected once.
    let scorer = Scorer::load(&ModelSearch::in_dir(&s.models), None, false).unwrap();
    let refs: Vec<Vec<f32>> = (0..PEOPLE)
        .map(|k| {
            scorer
                .reference(&s.root.join("refs").join(format!("person{k}")))
                .unwrap()
        })
        .collect();
    let all: Vec<&[f32]> = refs.iter().map(Vec::as_slice).collect();
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for (k, img) in s.originals.iter().enumerate() {
        for score in scorer.score(&augmentations(img), &all, "").unwrap() {
            assert!(score.faces >= 1);
            for (j, id) in score.id_each.into_iter().enumerate() {
                (if j == k { &mut same } else { &mut other }).push(id);
            }
        }
    }
    let lowest_same = same.iter().cloned().fold(f64::INFINITY, f64::min);
    let highest_other = other.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!("same person: mean {:.3}, min {lowest_same:.3}; other people: mean {:.3}, max {highest_other:.3}", mean(&same), mean(&other));
    assert!(
        lowest_same > highest_other,
        "every same-person pair must rank above every different-person pair"
    );

    // Diversity: one person's edits are near-duplicates; five different people are not; noise has no faces.
    let same_diversity = photo.stats.diversity.expect("every edit has a face").mean;
    let people = scorer.score(&s.originals, &all[..1], "").unwrap();
    let mixed_diversity = mean(
        &people
            .iter()
            .map(|p| p.diversity.expect("every photo has a face"))
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "diversity: one person's edits {same_diversity:.3}, {PEOPLE} people {mixed_diversity:.3}"
    );
    assert!(noise.stats.diversity.is_none());
    assert!(
        mixed_diversity > 3.0 * same_diversity,
        "different people must be far more diverse than one person's edits"
    );

    let Some(chromium) = common::browser::chromium() else {
        return;
    };
    let problems = common::browser::page_problems(&chromium, &cfg.out.join("report.html"));
    assert!(problems.is_empty(), "report problems: {problems:#?}");
}
