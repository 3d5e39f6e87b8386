//! The trained world (`world/`, docs/world.md): `persona demo` runs end to end, and every method learns a
//! held-out person — a trimmed run of each (few steps, few images) gives images that look more like the person
//! (identity similarity under the world's recogniser) than the same prompts drawn with "a person", while the
//! prompt score stays close to those images'.

use std::path::{Path, PathBuf};

use crate::common::persona;
use persona_diffusion::testing::fixtures_dir;

/// Training steps of the trimmed runs (the methods' own defaults are 320 / 600).
const STEPS: &str = "120";
/// How much closer to the person the identity's images must be than the baseline's (cosine, world recogniser).
const ID_MARGIN: f64 = 0.10;
/// How far the identity's prompt score may fall below the baseline's (CLIP cosine, world CLIP).
const PROMPT_SLACK: f64 = 0.05;

fn world() -> PathBuf {
    fixtures_dir().join("../world")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn ok(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = persona(&refs);
    assert!(
        o.status.success(),
        "persona {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The overall mean of a method in an evaluation's results.json: (ID, prompt score, images).
fn overall(results: &serde_json::Value, method: &str) -> (f64, f64, u64) {
    let m = results["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == method)
        .unwrap_or_else(|| panic!("no method {method} in the results"));
    let o = &m["overall"];
    (
        o["id"]["mean"].as_f64().unwrap(),
        o["prompt_score"]["mean"].as_f64().unwrap(),
        o["images"].as_u64().unwrap(),
    )
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn demo_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let mut args = strings(&["demo", "--world", &s(&world()), "--steps", "4"]);
    args.extend(strings(&["--images-per-prompt", "1", "--sampling-steps", "4"]));
    args.extend(["--out".into(), s(&out)]);
    ok(&args);
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("Photos learned from") && page.contains("a person (no identity)"));
    // every image the page shows exists
    for src in page.split("src=\"").skip(1) {
        let file = &src[..src.find('"').unwrap()];
        assert!(out.join(file).is_file(), "the page shows a missing {file}");
    }
    let results = read_json(&out.join("eval/results.json"));
    let (_, _, with) = overall(&results, "idea");
    let (_, _, without) = overall(&results, "baseline");
    assert_eq!((with, without), (6, 6));
    // a second run onto the same folder is refused without --overwrite
    let again = persona(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn every_method_learns_a_held_out_person() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world();
    let photos = w.join("people/heldout_1");
    let recognizer = w.join("faces/recognizer.onnx");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a close-up photo of {} on a beach\na photo of {} in a city, wearing a red sweater\na close-up photo of {} smiling\n",
    )
    .unwrap();
    let face = strings(&["--detector", "none", "--recognizer", &s(&recognizer)]);
    let mut report = Vec::new();
    for method in ["ti", "cross-init", "idea", "sefi"] {
        let identity = tmp.path().join(format!("{method}.safetensors"));
        let mut train = strings(&["train", "--model", &s(&w.join("pipeline"))]);
        train.extend(strings(&["--images", &s(&photos), "--token", "<h>"]));
        train.extend(strings(&["--method", method, "--steps", STEPS, "--batch-size", "4"]));
        train.extend(strings(&["--resolution", "64", "--subject", "{tokens}"]));
        train.extend(face.clone());
        train.extend(["--out".into(), s(&identity)]);
        ok(&train);

        let out = tmp.path().join(format!("eval-{method}"));
        let mut eval = strings(&["eval", "--model", &s(&w.join("pipeline"))]);
        eval.extend(strings(&["--identity", &s(&identity), "--prompts", &s(&prompts)]));
        eval.extend(strings(&["--baseline", "a person", "--images-per-prompt", "3"]));
        eval.extend(strings(&["--steps", "20", "--guidance", "5", "--scheduler", "ddim"]));
        eval.extend(strings(&["--references", &s(&photos), "--clip", &s(&w.join("clip"))]));
        eval.extend(face.clone());
        eval.extend(["--out".into(), s(&out)]);
        ok(&eval);
        let results = read_json(&out.join("results.json"));
        let (id, prompt, _) = overall(&results, method);
        let (base_id, base_prompt, _) = overall(&results, "baseline");
        report.push(format!(
            "{method}: ID {id:.3} vs {base_id:.3} without; prompt score {prompt:.3} vs {base_prompt:.3}"
        ));
        eprintln!("{}", report.last().unwrap());
        assert!(
            id > base_id + ID_MARGIN,
            "{method} did not learn the person: {}",
            report.join("; ")
        );
        assert!(
            prompt > base_prompt - PROMPT_SLACK,
            "{method} lost the prompt: {}",
            report.join("; ")
        );
    }
}
