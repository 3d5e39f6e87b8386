//! `persona compare` end to end on the tiny pipeline: two methods (ti, cross-init) × two identities × the
//! `single` prompt set. Two shards merged must give the same results.json as one run; an interrupted run
//! resumes to the same results; `persona eval` on the identities it trained scores the same; the report loads
//! in headless Chromium without errors or missing images. SeFi-IDE and ID-EA train through it with their
//! options.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use persona_eval::compare::{merge, run, Shard};
use persona_eval::eval::EvalConfig;
use persona_eval::prompts::PromptSet;
use persona_eval::protocol::Sampling;
use persona_faces::ModelSearch;

/// `compare.toml` in `dir`: the tiny pipeline at 32 px, 2 sampling and 2 training steps, with `body`'s methods
/// and identities.
fn write_manifest(dir: &Path, models: &Path, prompt_set: &str, body: &str) -> PathBuf {
    let text = format!(
        r#"model = "{root}/fixtures/sd2-tiny"
prompt_sets = ["{prompt_set}"]
clip = "{root}/fixtures/clip-tiny"
face_models = "{models}"
[sampling]
images_per_prompt = 1
steps = 2
resolution = 32
scheduler = "ddim"
[train]
steps = 2
batch_size = 1
resolution = 32
save_every = 1
{body}"#,
        root = common::root().canonicalize().unwrap().display(),
        models = models.display(),
    );
    let path = dir.join("compare.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn manifest(dir: &Path, photos: &[PathBuf], models: &Path) -> PathBuf {
    let alice = common::folder_of(&dir.join("photos/alice"), &[&photos[0]]);
    let bob = common::folder_of(&dir.join("photos/bob"), &[&photos[1]]);
    let body = format!(
        "[[methods]]\nname = \"ti\"\n[[methods]]\nname = \"cross-init\"\n\
         [[identities]]\nname = \"alice\"\nphotos = \"{}\"\n[[identities]]\nname = \"bob\"\nphotos = \"{}\"\n",
        alice.display(),
        bob.display()
    );
    write_manifest(dir, models, "single", &body)
}

fn read(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("results.json")).unwrap()
}

#[test]
fn sharded_compare_equals_one_run_resumes_and_its_report_loads() {
    let Some(models) = common::shared("models") else {
        return;
    };
    let Some(photos) = common::photos("celeba") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(tmp.path(), &photos, &models);
    let bar = ProgressBar::hidden();
    let (single, sharded) = (tmp.path().join("single"), tmp.path().join("sharded"));

    let t = Instant::now();
    let results = run(&m, &single, None, &bar)
        .unwrap()
        .expect("an unsharded run merges");
    eprintln!("one run: {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(results.images.len(), 2 * 2 * 10);
    let methods: Vec<&str> = results.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(methods, ["cross-init", "ti"]);
    assert!(results
        .images
        .iter()
        .all(|r| r.prompt_score.is_some() && single.join(&r.file).is_file()));

    let t = Instant::now();
    assert!(run(&m, &sharded, Some(Shard { k: 1, n: 2 }), &bar)
        .unwrap()
        .is_none());
    let early = merge(&m, &sharded).unwrap_err().to_string();
    assert!(early.contains("20 of 40 units are not finished"), "{early}");
    run(&m, &sharded, Some(Shard { k: 2, n: 2 }), &bar).unwrap();
    merge(&m, &sharded).unwrap();
    eprintln!("two shards + merge: {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(
        read(&single),
        read(&sharded),
        "sharded + merged results.json equals the single run's"
    );

    // An interrupted run: one image and one unit's records gone, another unit half written.
    let first = &results.images[0];
    let unit = single.join(&first.file).parent().unwrap().to_path_buf();
    std::fs::remove_file(single.join(&first.file)).unwrap();
    std::fs::remove_file(unit.join("records.json")).unwrap();
    let before = read(&single);
    std::fs::remove_file(single.join("results.json")).unwrap();
    run(&m, &single, None, &bar).unwrap();
    assert_eq!(
        read(&single),
        before,
        "a resumed run gives the same results"
    );

    // `persona eval` with the identities compare trained gives the same images and scores as compare's `ti`.
    let ids = |method: &str| {
        ["alice", "bob"]
            .map(|n| single.join(format!("identities/{method}/{n}.safetensors")))
            .to_vec()
    };
    let cfg = EvalConfig {
        model: Some(
            common::root()
                .join("fixtures/sd2-tiny")
                .to_string_lossy()
                .into_owned(),
        ),
        variant: None,
        identities: ids("ti"),
        force: false,
        prompts: Some(PromptSet::resolve("single").unwrap()),
        sampling: Sampling {
            images_per_prompt: 1,
            steps: 2,
            resolution: Some(32),
            scheduler: Some("ddim".into()),
            ..Sampling::default()
        },
        references: vec![tmp.path().join("photos")],
        images: None,
        clip: Some(common::root().join("fixtures/clip-tiny")),
        faces: ModelSearch::in_dir(&models),
        jpeg: false,
        out: tmp.path().join("eval"),
        baseline: None,
    };
    let evaluated = persona_eval::eval::run(&cfg, &bar).unwrap();
    let ti: Vec<_> = results
        .images
        .iter()
        .filter(|r| r.method == "ti")
        .cloned()
        .collect();
    assert_eq!(evaluated.images, ti);

    let Some(chromium) = common::browser::chromium() else {
        return;
    };
    let problems = common::browser::page_problems(&chromium, &single.join("report.html"));
    assert!(problems.is_empty(), "report problems: {problems:#?}");
}

/// `compare` trains every method `persona train` has, each with its own defaults and the options its entry
/// gives; a misspelt option is an error naming the method.
#[test]
fn compare_trains_sefi_and_idea_with_their_options() {
    let Some(models) = common::shared("models") else {
        return;
    };
    let Some(photos) = common::photos("celeba") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let alice = common::folder_of(
        &tmp.path().join("photos/alice"),
        &photos[..2].iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    );
    std::fs::write(
        tmp.path().join("two.txt"),
        "a {} person on the beach\na {} person with a cat\n",
    )
    .unwrap();
    let identity = format!(
        "[[identities]]\nname = \"alice\"\nphotos = \"{}\"\n",
        alice.display()
    );
    let write = |methods: &str| {
        write_manifest(
            tmp.path(),
            &models,
            "two.txt",
            &format!("{methods}{identity}"),
        )
    };
    let m = write("[[methods]]\nname = \"sefi\"\nstages = 2\nclass_word = \"person\"\n[[methods]]\nname = \"idea-kv\"\nmethod = \"idea\"\nkv_rank = 2\n");
    let out = tmp.path().join("out");
    let results = run(&m, &out, None, &ProgressBar::hidden())
        .unwrap()
        .expect("an unsharded run merges");
    let methods: Vec<&str> = results.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(methods, ["idea-kv", "sefi"]);
    assert_eq!(results.images.len(), 2 * 2);

    let sd = persona_diffusion::pipeline::StableDiffusion::load(
        &format!("{}/fixtures/sd2-tiny", common::root().display()),
        &Default::default(),
    )
    .unwrap();
    let load = |method: &str| {
        let file = out.join(format!("identities/{method}/alice.safetensors"));
        persona_identity::load(&sd, &[file], false)
            .unwrap()
            .remove(0)
    };
    let sefi = load("sefi");
    assert_eq!(sefi.meta.method, "sefi");
    assert_eq!(
        sefi.modules[persona_identity::stages::KEYS].dims()[0],
        2,
        "stages = 2 reached the method"
    );
    let idea = load("idea-kv");
    assert_eq!(idea.meta.method, "idea");
    assert!(
        idea.meta
            .face_model
            .as_deref()
            .is_some_and(|f| f.contains("facenet")),
        "{:?}",
        idea.meta.face_model
    );
    assert!(
        idea.modules.keys().any(|k| k.contains("to_k")),
        "kv_rank gave key/value deltas: {:?}",
        idea.modules.keys().collect::<Vec<_>>()
    );

    // The training cost each file records reaches training.json and the report.
    let costs: Vec<persona_eval::results::TrainingCost> =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    assert_eq!(costs.len(), 2);
    assert!(
        costs
            .iter()
            .all(|c| c.steps == Some(2) && c.seconds.is_some_and(|s| s > 0.0)),
        "{costs:?}"
    );
    assert!(
        costs.iter().all(|c| c.peak_rss_gb.is_some_and(|g| g > 0.0)),
        "{costs:?}"
    );
    assert!(std::fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("Training cost"));

    let m = write("[[methods]]\nname = \"sefi\"\nstagez = 2\n");
    let err = format!(
        "{:#}",
        run(&m, &tmp.path().join("bad"), None, &ProgressBar::hidden()).unwrap_err()
    );
    assert!(err.contains("sefi") && err.contains("stagez"), "{err}");
    let m = write("[[methods]]\nname = \"dreambooth\"\n");
    let err = format!(
        "{:#}",
        run(&m, &tmp.path().join("bad"), None, &ProgressBar::hidden()).unwrap_err()
    );
    assert!(
        err.contains("dreambooth") && err.contains("cross-init"),
        "{err}"
    );
}

/// The browser check itself must catch what it is there to catch.
#[test]
fn browser_check_reports_missing_images_and_console_errors() {
    let Some(chromium) = common::browser::chromium() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("bad.html");
    std::fs::write(&page, "<!DOCTYPE html><html><body><img src=\"missing.png\"><script>console.error('boom')</script></body></html>").unwrap();
    let problems = common::browser::page_problems(&chromium, &page);
    eprintln!("{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("image not shown") && p.contains("missing.png")));
    assert!(problems.iter().any(|p| p.contains("boom")));
}
