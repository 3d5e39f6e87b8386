//! `persona bench gradcheck`: the building blocks' gradient checks (`persona_diffusion::testing::gradcheck`)
//! on a device — the same suites `cargo test` runs on the CPU, so that every op on a gradient path is checked
//! against finite differences on every device it runs on, GPU included, without a Rust toolchain there.

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use persona_diffusion::device::{self, DeviceRequest};
use persona_diffusion::testing::gradcheck::{finite_differences, half_precision, Outcome};

#[derive(Args, Debug)]
pub struct GradcheckArgs {
    /// Where to run the checks.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

pub fn run(a: &GradcheckArgs) -> Result<()> {
    let (dev, note) = device::select(a.device)?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let mut rows: Vec<(&str, Outcome)> = Vec::new();
    rows.extend(
        finite_differences(&dev)?
            .into_iter()
            .map(|o| ("f64 vs finite differences", o)),
    );
    rows.extend(
        half_precision(&dev, DType::BF16)?
            .into_iter()
            .map(|o| ("bf16 vs f32", o)),
    );
    rows.extend(
        half_precision(&dev, DType::F16)?
            .into_iter()
            .map(|o| ("f16 vs f32", o)),
    );
    eprintln!(
        "{:<28} {:<44} {:>9} {:>9}  result",
        "suite", "block", "error", "limit"
    );
    for (suite, o) in &rows {
        eprintln!(
            "{suite:<28} {:<44} {:>9.2e} {:>9.1e}  {}",
            o.name,
            o.error,
            o.limit,
            if o.passed() { "ok" } else { "FAIL" }
        );
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|(_, o)| !o.passed())
        .map(|(s, o)| format!("{} ({s})", o.name))
        .collect();
    let json: Vec<serde_json::Value> =
        rows.iter().map(|(s, o)| serde_json::json!({"suite": s, "block": o.name, "error": o.error, "limit": o.limit})).collect();
    super::emit(
        serde_json::json!({"part": "Gradcheck", "passed": failed.is_empty(), "rows": json}),
        None,
        &dev,
        DType::F64,
    );
    if !failed.is_empty() {
        bail!(
            "gradient checks failed on {}: {}",
            device::device_name(&dev),
            failed.join(", ")
        );
    }
    Ok(())
}
