//! The trained world (`world/`, docs/world.md): `persona demo` runs end to end on it — trains, generates with
//! and without the identity, scores, and writes a page whose every image exists — and the methods that learn
//! a person on it (Textual Inversion, SeFi-IDE, ID-EA) beat "a person" on a trimmed run. Cross Initialization
//! is not held to that: on this world its tokens stay at the celebrity anchor and it does not learn a person
//! (docs/world.md, "Method quality"), so a margin asserted for it would fail or assert nothing.

use std::path::{Path, PathBuf};

use crate::common::persona;
use persona_diffusion::testing::fixtures_dir;

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
    args.extend(strings(&[
        "--images-per-prompt",
        "1",
        "--sampling-steps",
        "4",
    ]));
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

/// How far above "a person" a learned identity's mean ID similarity must be. On `world/quick.toml` the three
/// methods were 0.19–0.30 above it on the seven-round world (docs/world.md); a broken method is at the baseline.
const ID_MARGIN: f64 = 0.08;
/// How far below "a person"'s prompt score a learned identity's may fall: the identity may displace some of the
/// prompt (ID-EA lost 0.10 on this run), not most of it.
const PROMPT_SLACK: f64 = 0.2;

#[test]
fn learned_identities_beat_a_person() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("quick");
    let manifest = world().join("quick.toml");
    ok(&strings(&[
        "compare",
        "--manifest",
        &s(&manifest),
        "--out",
        &s(&out),
    ]));
    let results = read_json(&out.join("results.json"));
    let (base_id, base_prompt, base_images) = overall(&results, "baseline");
    for method in ["ti", "sefi", "idea"] {
        let (id, prompt, images) = overall(&results, method);
        assert_eq!(images, base_images, "{method}: every prompt drawn for both");
        assert!(
            id >= base_id + ID_MARGIN,
            "{method}: ID similarity {id:.3} is not {ID_MARGIN} above \"a person\"'s {base_id:.3}"
        );
        assert!(
            prompt >= base_prompt - PROMPT_SLACK,
            "{method}: prompt score {prompt:.3} fell more than {PROMPT_SLACK} below \"a person\"'s {base_prompt:.3}"
        );
    }
}
