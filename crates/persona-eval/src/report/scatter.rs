//! The ID-vs-prompt scatter of the Celeb Basis figure: one point per method per prompt class, drawn as SVG
//! (plotters' SVG backend: text stays text, the browser renders it).

use plotters::prelude::*;

use crate::results::Results;

/// A point: method, prompt class, prompt score (x), ID (y).
pub type Point = (String, String, f64, f64);

/// The points the results have (classes without a prompt or ID score are left out).
pub fn points(results: &Results) -> Vec<Point> {
    let mut out = Vec::new();
    for m in &results.methods {
        for (class, s) in &m.classes {
            if let (Some(p), Some(id)) = (s.prompt_score, s.id) {
                out.push((m.method.clone(), class.clone(), p.mean, id.mean));
            }
        }
    }
    out
}

/// `(lo, hi)` of the values, widened so that a single value still spans an axis.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let pad = ((hi - lo) * 0.15).max(0.02);
    (lo - pad, hi + pad)
}

/// The plot as an SVG document, `None` when there is no point to draw.
pub fn svg(points: &[Point]) -> Option<String> {
    if points.is_empty() {
        return None;
    }
    let mut out = String::new();
    draw(points, &mut out).expect("drawing into a string does not fail");
    Some(out)
}

fn draw<'a>(
    points: &[Point],
    out: &'a mut String,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>> {
    let root = SVGBackend::with_string(out, (640, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let x = range(points.iter().map(|p| p.2));
    let y = range(points.iter().map(|p| p.3));
    let mut chart = ChartBuilder::on(&root)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .caption("Identity vs prompt similarity", ("sans-serif", 18))
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .x_desc("prompt score (CLIP)")
        .y_desc("identity similarity")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let mut methods: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    methods.dedup();
    for (k, method) in methods.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let mine: Vec<&Point> = points.iter().filter(|p| p.0 == *method).collect();
        chart
            .draw_series(mine.iter().map(|p| {
                EmptyElement::at((p.2, p.3))
                    + Circle::new((0, 0), 5, color.filled())
                    + Text::new(p.1.clone(), (7, -12), ("sans-serif", 12).into_font())
            }))?
            .label(method.to_string())
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
