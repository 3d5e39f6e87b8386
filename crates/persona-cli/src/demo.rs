//! `persona demo`: the whole job on the trained world (`world/`, docs/world.md), in minutes on a CPU. It learns a
//! held-out world person from their photos, draws them in new scenes and next to a world celebrity, scores the
//! images against the same prompts without the identity, and writes one page to open.
//!
//! The demo is the other commands run in order with the flags a user would type (`train`, then `eval`), so it
//! shows exactly what they do and never drifts from them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, FromArgMatches};
use persona_eval::protocol::BASELINE as BASELINE_METHOD;
use persona_eval::report::esc;
use persona_eval::results::{ImageRecord, Results};
use persona_train::recipe::MethodName;

use crate::{eval, train};

/// The world's prompts the demo draws: new scenes, clothing, an expression and a celebrity beside the person.
const PROMPTS: &str = "\
a close-up photo of {} on a beach
a photo of {} in the snow, wearing a hat and a scarf
a photo of {} in a city, wearing sunglasses
a close-up photo of {} at night, laughing
a photo of {} in a library, wearing a blue jacket
a photo of {} and Natalie Portman in a park
";

/// The phrase the comparison images use instead of the identity.
const BASELINE: &str = "a person";

/// Learns a held-out person of the trained world (docs/world.md) from their photos, generates them in new
/// scenes, evaluates identity similarity and prompt score against the same prompts without the identity
/// ("a person"), and writes OUT/report.html: the photos learned from, the images and the scores. Everything it
/// needs is in the repository's world/ folder; about two minutes on two CPU cores (release build).
#[derive(Args, Debug)]
#[command(after_help = "Example (from the repository root):\n  \
cargo run --release -p persona-cli -- demo\n  \
persona demo --method cross-init --person heldout_3 --out demo-cross-init")]
pub struct DemoArgs {
    /// The world folder (default: ./world, else the one beside this program's sources).
    #[arg(long, value_name = "DIR")]
    world: Option<PathBuf>,
    /// The held-out person to learn: a folder of WORLD/people.
    #[arg(long, default_value = "heldout_0")]
    person: String,
    /// Personalization method.
    #[arg(long, value_enum, default_value = "idea")]
    method: MethodName,
    /// Training steps (default: the method's own).
    #[arg(long, value_parser = crate::values::positive)]
    steps: Option<usize>,
    /// Images per prompt (each with and without the identity).
    #[arg(long, default_value_t = 4, value_parser = crate::values::positive)]
    images_per_prompt: usize,
    /// Denoising steps per image.
    #[arg(long, default_value_t = 30, value_parser = crate::values::positive)]
    sampling_steps: usize,
    /// Output folder.
    #[arg(long, default_value = "demo")]
    out: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
}

/// The world's files the demo uses, checked up front.
struct World {
    pipeline: PathBuf,
    clip: PathBuf,
    recognizer: PathBuf,
    /// The names the world's text encoder ties to faces: Cross Init's and ID-EA's celebrity anchor.
    names: PathBuf,
    photos: PathBuf,
}

impl World {
    fn find(dir: Option<&Path>, person: &str) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None if Path::new("world/pipeline").is_dir() => PathBuf::from("world"),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../world"),
        };
        let w = Self {
            pipeline: dir.join("pipeline"),
            clip: dir.join("clip"),
            recognizer: dir.join("faces/recognizer.onnx"),
            names: dir.join("names.txt"),
            photos: dir.join("people").join(person),
        };
        for p in [&w.pipeline, &w.clip, &w.photos] {
            if !p.is_dir() {
                bail!("{}: missing; --world must be the trained world folder (tools/world/train.py) and --person one of its people/", p.display());
            }
        }
        for (p, what) in [(&w.recognizer, "recogniser"), (&w.names, "celebrity names")] {
            if !p.is_file() {
                bail!("{}: missing {what}", p.display());
            }
        }
        Ok(w)
    }
}

/// Parses a sub-command's flags as a user would type them (`persona <command> ARGS…`).
fn parse<A: Args + FromArgMatches>(command: &'static str, argv: &[String]) -> Result<A> {
    let cmd = A::augment_args(clap::Command::new(command).no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(argv)
        .with_context(|| format!("the demo's {command} flags"))?;
    Ok(A::from_arg_matches(&matches)?)
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn run(a: DemoArgs) -> Result<()> {
    let world = World::find(a.world.as_deref(), &a.person)?;
    if a.out.exists() {
        if !a.overwrite {
            bail!(
                "{} exists; choose another --out or pass --overwrite",
                a.out.display()
            );
        }
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let token = format!("<{}>", a.person);
    let identity = a.out.join(format!("{}.safetensors", a.person));
    let prompts = a.out.join("prompts.txt");
    std::fs::write(&prompts, PROMPTS).with_context(|| format!("writing {}", prompts.display()))?;
    let face = ["--detector", "none", "--recognizer"];

    eprintln!(
        "[1/2] learning {} from {} with {}",
        a.person,
        world.photos.display(),
        a.method.name()
    );
    let mut t = args(&[
        "--model",
        &path(&world.pipeline),
        "--images",
        &path(&world.photos),
    ]);
    t.extend(args(&["--token", &token, "--method", a.method.name()]));
    // 64-pixel world images; the world's captions name a person without "face of … person".
    t.extend(args(&["--resolution", "64", "--subject", "{tokens}"]));
    t.extend(args(&face));
    t.extend([path(&world.recognizer), "--out".into(), path(&identity)]);
    if matches!(a.method, MethodName::CrossInit | MethodName::Idea) {
        t.extend(["--names".into(), path(&world.names)]);
    }
    if let Some(s) = a.steps {
        t.extend(["--steps".into(), s.to_string()]);
    }
    train::run(parse("train", &t)?)?;

    eprintln!("[2/2] generating and scoring, with the identity and with \"{BASELINE}\"");
    let eval_dir = a.out.join("eval");
    let mut e = args(&[
        "--model",
        &path(&world.pipeline),
        "--identity",
        &path(&identity),
    ]);
    e.extend(args(&[
        "--prompts",
        &path(&prompts),
        "--baseline",
        BASELINE,
    ]));
    e.extend([
        "--images-per-prompt".into(),
        a.images_per_prompt.to_string(),
        "--steps".into(),
        a.sampling_steps.to_string(),
    ]);
    e.extend(args(&["--guidance", "5", "--scheduler", "ddim"]));
    e.extend(args(&[
        "--references",
        &path(&world.photos),
        "--clip",
        &path(&world.clip),
    ]));
    e.extend(args(&face));
    e.extend([path(&world.recognizer), "--out".into(), path(&eval_dir)]);
    eval::run(parse("eval", &e)?)?;

    let results = Results::read(&eval_dir.join("results.json"))?;
    let page = a.out.join("report.html");
    let html = report(&a, &world, &results)?;
    std::fs::write(&page, html).with_context(|| format!("writing {}", page.display()))?;
    eprintln!(
        "open {} (the full evaluation: {}/report.html)",
        page.display(),
        eval_dir.display()
    );
    Ok(())
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:70em}img{image-rendering:pixelated;\
width:128px;height:128px;margin:2px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}\
.row{display:flex;align-items:center;flex-wrap:wrap}.label{width:9em;color:#555}";

/// The demo's page: the photos learned from, each prompt's images with and without the identity, the scores.
fn report(a: &DemoArgs, world: &World, results: &Results) -> Result<String> {
    let mut h = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>persona demo</title>\
         <style>{STYLE}</style></head><body><h1>persona demo: {} learned with {}</h1>",
        a.person,
        a.method.name()
    );
    h.push_str("<h2>Photos learned from</h2><div class=\"row\">");
    for photo in persona_train::data::list_images(&world.photos)? {
        let name = photo.file_name().map(|n| n.to_string_lossy().into_owned());
        let copy = a
            .out
            .join("photos")
            .join(name.as_deref().unwrap_or("photo.png"));
        std::fs::create_dir_all(copy.parent().expect("a folder"))?;
        std::fs::copy(&photo, &copy).with_context(|| format!("copying {}", photo.display()))?;
        let _ = write!(h, "<img src=\"{}\">", rel(&a.out, &copy));
    }
    h.push_str("</div><h2>Scores</h2>");
    scores(&mut h, results);
    h.push_str("<h2>Images</h2>");
    let mut prompts: Vec<&str> = Vec::new();
    for r in &results.images {
        if !prompts.contains(&r.prompt.as_str()) {
            prompts.push(&r.prompt);
        }
    }
    for prompt in prompts {
        let _ = write!(h, "<h3>{}</h3>", esc(prompt));
        let learned = results
            .images
            .iter()
            .find(|r| r.method != BASELINE_METHOD)
            .map_or("", |r| r.method.as_str());
        for method in [learned, BASELINE_METHOD] {
            let row: Vec<&ImageRecord> = results
                .images
                .iter()
                .filter(|r| r.prompt == prompt && r.method == method)
                .collect();
            let label = if method == BASELINE_METHOD {
                format!("{BASELINE} (no identity)")
            } else {
                a.person.clone()
            };
            let _ = write!(
                h,
                "<div class=\"row\"><span class=\"label\">{}</span>",
                esc(&label)
            );
            for r in row {
                let id = r.id.map_or("no face".into(), |v| format!("ID {v:.2}"));
                let _ = write!(h, "<img src=\"eval/{}\" title=\"{}\">", r.file, esc(&id));
            }
            h.push_str("</div>");
        }
    }
    h.push_str("<p>The full evaluation, with intervals: <a href=\"eval/report.html\">eval/report.html</a>.</p></body></html>\n");
    Ok(h)
}

/// ID similarity and prompt score with and without the identity (means with 95 % intervals).
fn scores(h: &mut String, results: &Results) {
    h.push_str(
        "<table><tr><th></th><th>images</th><th>ID similarity</th><th>prompt score</th></tr>",
    );
    let show = |i: &Option<persona_eval::stats::Interval>| {
        i.as_ref().map_or("–".into(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.mean, i.lo, i.hi)
        })
    };
    for m in &results.methods {
        let label = if m.method == BASELINE_METHOD {
            format!("{BASELINE} (no identity)")
        } else {
            m.method.clone()
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&label),
            m.overall.images,
            show(&m.overall.id),
            show(&m.overall.prompt_score)
        );
    }
    h.push_str("</table>");
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}
