//! `report.html`: one self-contained page (inline CSS and SVG; images linked relative to the page, so the
//! output folder can be moved or served as is): the settings, the method table with 95 % intervals, the
//! ID-vs-prompt scatter, and per-prompt image grids with each image's scores and a mark where no face was found.

pub mod scatter;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use persona_diffusion::pipeline::image::write_atomic;
use persona_diffusion::Result;

use crate::results::{ImageRecord, Results, Stats, TrainingCost};
use crate::stats::Interval;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}\
.grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:136px}figure img{width:128px;height:128px;\
object-fit:cover;image-rendering:pixelated;border:4px solid #fff}figure.noface img{border-color:#d33}\
figcaption{font-size:12px}.mark{color:#d33;font-weight:bold}.muted{color:#777}h3{margin-bottom:4px}";

/// Writes `dir/report.html` (atomically).
pub fn write(results: &Results, costs: &[TrainingCost], dir: &Path) -> Result<()> {
    write_atomic(&dir.join("report.html"), html(results, costs).as_bytes())
}

/// The whole page; `costs` (from `compare`) adds the training-cost table.
pub fn html(results: &Results, costs: &[TrainingCost]) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>persona evaluation</title>");
    let _ = write!(
        h,
        "<style>{STYLE}</style></head><body><h1>persona evaluation</h1>"
    );
    settings(&mut h, &results.settings);
    method_table(&mut h, results);
    cost_table(&mut h, costs);
    h.push_str("<h2>Identity vs prompt</h2>");
    match scatter::svg(&scatter::points(results)) {
        Some(svg) => h.push_str(&svg),
        None => h.push_str(
            "<p class=\"muted\">No point to plot: prompt scores or ID scores are missing.</p>",
        ),
    }
    grids(&mut h, results);
    h.push_str("</body></html>\n");
    h
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn settings(h: &mut String, s: &serde_json::Value) {
    h.push_str("<h2>Settings</h2><table>");
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(map) = s.as_object() {
        for (k, v) in map {
            match v.as_object() {
                Some(inner) => rows.extend(
                    inner
                        .iter()
                        .map(|(k2, v2)| (format!("{k}.{k2}"), plain(v2, "default"))),
                ),
                None => rows.push((k.clone(), plain(v, "– (images made elsewhere)"))),
            }
        }
    }
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
    }
    h.push_str("</table>");
}

/// A setting as text; `null` means the default inside a group and "not used" at the top.
fn plain(v: &serde_json::Value, null: &str) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => null.into(),
        other => other.to_string(),
    }
}

fn interval(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!(
            "{:.3} <span class=\"muted\">[{:.3}, {:.3}]</span>",
            i.mean, i.lo, i.hi
        ),
        None => "<span class=\"muted\">missing</span>".into(),
    }
}

fn stats_cells(s: &Stats) -> String {
    format!(
        "<td>{}</td><td>{:.2} ({}/{})</td><td>{}</td><td>{}</td><td>{}</td>",
        s.images,
        s.detection_rate,
        s.detected,
        s.images,
        interval(&s.id),
        interval(&s.prompt_score),
        interval(&s.diversity)
    )
}

fn method_table(h: &mut String, results: &Results) {
    h.push_str("<h2>Methods</h2><p class=\"muted\">Means over (identity, prompt) groups with 95 % bootstrap intervals; ID over images with a face; diversity: mean pairwise 1 − cos of the face embeddings within a prompt.");
    if whole_image(results) {
        h.push_str(" No face detector (<code>--detector none</code>): every whole image counts as the face, so the detection rate is 1 by construction.");
    }
    h.push_str("</p>");
    h.push_str("<table><tr><th>method</th><th>prompts</th><th>images</th><th>detection rate</th><th>ID</th><th>prompt score</th><th>diversity</th></tr>");
    for m in &results.methods {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>all</td>{}</tr>",
            esc(&m.method),
            stats_cells(&m.overall)
        );
        for (class, s) in &m.classes {
            let _ = write!(
                h,
                "<tr><td></td><td>{}</td>{}</tr>",
                esc(class),
                stats_cells(s)
            );
        }
    }
    h.push_str("</table>");
}

/// Scored in whole-image mode (`--detector none`): the recogniser setting names the whole-image "detector".
fn whole_image(results: &Results) -> bool {
    results.settings["recognizer"]
        .as_str()
        .is_some_and(|r| r.starts_with(persona_faces::WholeImage::NAME))
}

/// Time per identity and peak memory of training, per method (the spec's optional costs).
fn cost_table(h: &mut String, costs: &[TrainingCost]) {
    if costs.iter().all(|c| c.seconds.is_none()) {
        return;
    }
    h.push_str("<h2>Training cost</h2><p class=\"muted\">As each identity file records it: wall time and steps of the run that trained it, and the peak resident memory of that process.</p>");
    h.push_str("<table><tr><th>method</th><th>identity</th><th>steps</th><th>time</th><th>s / step</th><th>peak memory</th></tr>");
    let opt =
        |v: Option<String>| v.unwrap_or_else(|| "<span class=\"muted\">not recorded</span>".into());
    for c in costs {
        let per_step = c
            .seconds
            .zip(c.steps.filter(|&n| n > 0))
            .map(|(s, n)| format!("{:.2}", s / n as f64));
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.method),
            esc(&c.identity),
            opt(c.steps.map(|n| n.to_string())),
            opt(c.seconds.map(|s| format!("{s:.1} s"))),
            opt(per_step),
            opt(c.peak_rss_gb.map(|g| format!("{g:.2} GB")))
        );
    }
    h.push_str("</table>");
}

fn score(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.3}"))
}

fn figure(h: &mut String, r: &ImageRecord) {
    let (class, mark) = if r.faces == 0 {
        (
            " class=\"noface\"",
            "<span class=\"mark\">✗ no face</span><br>",
        )
    } else {
        ("", "")
    };
    let alt = format!("{} {} #{}", r.identity, r.prompt, r.index);
    let _ = write!(
        h,
        "<figure{class}><img src=\"{}\" alt=\"{}\"><figcaption>{mark}{} · ID {} · prompt {}</figcaption></figure>",
        esc(&r.file),
        esc(&alt),
        esc(&r.identity),
        score(r.id),
        score(r.prompt_score)
    );
}

fn grids(h: &mut String, results: &Results) {
    h.push_str("<h2>Images</h2>");
    let mut by_prompt: BTreeMap<(&str, &str, usize), Vec<&ImageRecord>> = BTreeMap::new();
    for r in &results.images {
        by_prompt
            .entry((&r.method, &r.class, r.prompt_index))
            .or_default()
            .push(r);
    }
    for p in &results.prompts {
        let _ = write!(
            h,
            "<h3>{} · {} · {}</h3><p class=\"muted\">detection {:.2} · ID {} · prompt {} · diversity {}</p><div class=\"grid\">",
            esc(&p.method),
            esc(&p.class),
            esc(&p.prompt),
            p.stats.detection_rate,
            interval(&p.stats.id),
            interval(&p.stats.prompt_score),
            interval(&p.stats.diversity)
        );
        for r in by_prompt
            .get(&(p.method.as_str(), p.class.as_str(), p.prompt_index))
            .into_iter()
            .flatten()
        {
            figure(h, r);
        }
        h.push_str("</div>");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(
            super::esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    /// Scored with `--detector none`, the page says why every image has a face.
    #[test]
    fn whole_image_mode_explains_the_detection_rate() {
        let page = |recognizer: &str| {
            let settings = serde_json::json!({ "recognizer": recognizer });
            super::html(
                &crate::results::Results::summarise(settings, vec![], 0),
                &[],
            )
        };
        let note = "detection rate is 1 by construction";
        assert!(page("none (whole image) + world.onnx").contains(note));
        assert!(!page("mtcnn + facenet_inception_resnet_v1_160.onnx").contains(note));
    }
}
