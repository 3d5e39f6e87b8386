//! Replays the diffusers scheduler trajectories of `fixtures/reference/schedulers/` (see fixtures/README.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use persona_diffusion::schedulers::{
    build, DdimConfig, DdpmConfig, DpmSolverConfig, EulerAncestralConfig, EulerConfig,
    NoiseSchedule, PredictionType, SchedulerConfig, SchedulerKind,
};
use serde_json::Value;

/// `scheduler_config.json` of stabilityai/stable-diffusion-2-1-base, the config the fixtures start from.
const SD21_BASE: &str = r#"{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.10.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}"#;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/reference/schedulers")
}

/// The trajectory cases of the classes persona implements (PNDM is only a config class name for us).
fn cases() -> Vec<(String, Value)> {
    let mut cases: Vec<(String, Value)> = std::fs::read_dir(fixture_dir())
        .expect("fixtures/reference/schedulers")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let meta: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.file_stem().unwrap().to_string_lossy().into_owned(), meta)
        })
        .filter(|(_, meta)| meta["class"] != "PNDMScheduler")
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        cases.len(),
        30,
        "5 classes × 3 spacings × 2 prediction types"
    );
    cases
}

/// The SD 2.1 config with the case's overrides, as the fixture script passes them to `from_config`.
fn case_config(meta: &Value) -> SchedulerConfig {
    let mut config: Value = serde_json::from_str(SD21_BASE).unwrap();
    for key in ["timestep_spacing", "prediction_type"] {
        config[key] = meta["config"][key].clone();
    }
    serde_json::from_value(config).unwrap()
}

fn kind(meta: &Value) -> SchedulerKind {
    meta["class"].as_str().unwrap().parse().unwrap()
}

fn load(case: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir().join(format!("{case}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Elementwise |got − want| ≤ 1e-5·|want| + 1e-6·max(1, max|want|).
///
/// The absolute part scales with the tensor: with random model outputs the samples grow to ~30, where one
/// float32 ulp is 2e-6, and diffusers' own coefficients carry 1-ulp noise (PyTorch's CPU `sqrt` goes through
/// MKL, which is not correctly rounded), so elements that cancel to near zero can't be closer than that.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let atol = 1e-6 * w.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = g
        .iter()
        .zip(&w)
        .enumerate()
        .map(|(i, (g, w))| (i, (g - w).abs() / (atol + 1e-5 * w.abs())))
        .fold(
            (0, 0f32),
            |a, b| if b.1 > a.1 || b.1.is_nan() { b } else { a },
        );
    assert!(
        worst.1 <= 1.0,
        "{what}: element {} is {} vs {} ({}× the tolerance)",
        worst.0,
        g[worst.0],
        w[worst.0],
        worst.1
    );
}

#[test]
fn trajectories_match_diffusers() {
    for (case, meta) in cases() {
        let t = load(&case);
        let steps = meta["num_inference_steps"].as_u64().unwrap() as usize;
        let mut scheduler = build(kind(&meta), &case_config(&meta), steps).unwrap();

        let want_t = t["timesteps"].to_vec1::<f32>().unwrap();
        let got_t: Vec<f32> = scheduler.timesteps().iter().map(|&x| x as f32).collect();
        assert_eq!(got_t, want_t, "{case}: timesteps");
        let want_sigma = t["init_noise_sigma"].to_vec1::<f32>().unwrap()[0] as f64;
        let got_sigma = scheduler.init_noise_sigma();
        assert!(
            (got_sigma - want_sigma).abs() <= 1e-6 * want_sigma,
            "{case}: init_noise_sigma {got_sigma} vs {want_sigma}"
        );

        let mut sample = t["sample_0"].clone();
        for i in 0..meta["num_steps_taken"].as_u64().unwrap() as usize {
            let scaled = scheduler.scale_model_input(&sample, i).unwrap();
            assert_close(
                &format!("{case}: scaled_input_{i}"),
                &scaled,
                &t[&format!("scaled_input_{i}")],
            );
            let noise = t.get(&format!("noise_{i}"));
            assert!(
                noise.is_none() || scheduler.needs_noise(),
                "{case}: diffusers drew noise"
            );
            sample = scheduler
                .step(&t[&format!("model_output_{i}")], i, &sample, noise)
                .unwrap();
            assert_close(
                &format!("{case}: sample_{}", i + 1),
                &sample,
                &t[&format!("sample_{}", i + 1)],
            );
        }
    }
}

/// A number, also from the non-finite spellings Python writes (`-Infinity`, or `"-inf"` via `str`).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "-inf" | "-Infinity" => Some(f64::NEG_INFINITY),
            "inf" | "Infinity" => Some(f64::INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn resolved(kind: SchedulerKind, c: &SchedulerConfig) -> Value {
    match kind {
        SchedulerKind::Ddim => serde_json::to_value(DdimConfig::from_config(c)),
        SchedulerKind::DpmSolverMultistep => serde_json::to_value(DpmSolverConfig::from_config(c)),
        SchedulerKind::Euler => serde_json::to_value(EulerConfig::from_config(c)),
        SchedulerKind::EulerAncestral => serde_json::to_value(EulerAncestralConfig::from_config(c)),
        SchedulerKind::Ddpm => serde_json::to_value(DdpmConfig::from_config(c)),
        SchedulerKind::Pndm => unreachable!(),
    }
    .unwrap()
}

/// `from_config` takes the keys the class knows and its defaults for the rest: our resolved config must
/// equal diffusers' key for key, and diffusers' only other keys are the unused ones it carries along.
#[test]
fn from_config_matches_diffusers() {
    let input: Value = serde_json::from_str(SD21_BASE).unwrap();
    for (case, meta) in cases() {
        let ours = resolved(kind(&meta), &case_config(&meta));
        let theirs = meta["config"].as_object().unwrap();
        for (key, value) in ours.as_object().unwrap() {
            let want = theirs
                .get(key)
                .unwrap_or_else(|| panic!("{case}: diffusers has no key {key}"));
            assert!(
                same(value, want),
                "{case}: {key} = {value}, diffusers {want}"
            );
        }
        for key in theirs
            .keys()
            .filter(|k| !k.starts_with('_') && !ours.as_object().unwrap().contains_key(*k))
        {
            assert!(input.get(key).is_some(), "{case}: we don't model {key}");
        }
    }
}

#[test]
fn training_noise_matches_diffusers() {
    let t = load("DDPMScheduler_training");
    let schedule = NoiseSchedule::from_config(&serde_json::from_str(SD21_BASE).unwrap()).unwrap();
    let want = t["alphas_cumprod"].to_vec1::<f32>().unwrap();
    for (i, (g, w)) in schedule.alphas_cumprod().iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1.2e-7 * w,
            "alphas_cumprod[{i}] {g} vs {w}"
        );
    }
    assert_eq!(schedule.alphas_cumprod().len(), want.len());
    let steps: Vec<usize> = t["t"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&x| x as usize)
        .collect();
    let (x0, noise) = (&t["x0"], &t["noise"]);
    assert_close(
        "add_noise",
        &schedule.add_noise(x0, noise, &steps).unwrap(),
        &t["noisy"],
    );
    assert_close(
        "velocity",
        &schedule.velocity(x0, noise, &steps).unwrap(),
        &t["velocity"],
    );
    let target = schedule
        .target(PredictionType::VPrediction, x0, noise, &steps)
        .unwrap();
    assert_close("v target", &target, &t["velocity"]);
    assert_close(
        "ε target",
        &schedule
            .target(PredictionType::Epsilon, x0, noise, &steps)
            .unwrap(),
        noise,
    );
}

#[test]
fn scheduler_names_parse() {
    for (name, kind) in [
        ("ddim", SchedulerKind::Ddim),
        ("dpm++2m", SchedulerKind::DpmSolverMultistep),
        ("euler", SchedulerKind::Euler),
        ("euler-a", SchedulerKind::EulerAncestral),
        ("ddpm", SchedulerKind::Ddpm),
        (
            "EulerAncestralDiscreteScheduler",
            SchedulerKind::EulerAncestral,
        ),
        ("PNDMScheduler", SchedulerKind::Pndm),
    ] {
        assert_eq!(name.parse::<SchedulerKind>().unwrap(), kind);
    }
    assert!("pndm".parse::<SchedulerKind>().is_err());
    let sd21: SchedulerConfig = serde_json::from_str(SD21_BASE).unwrap();
    assert_eq!(SchedulerKind::for_model(&sd21), SchedulerKind::Ddim);
}

#[test]
fn config_files_with_python_infinity_load() {
    let dir = std::env::temp_dir().join(format!("persona-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler_config.json");
    std::fs::write(&path, r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "note": "NaN"}"#)
        .unwrap();
    let config = SchedulerConfig::from_file(&path).unwrap();
    assert_eq!(config.lambda_min_clipped, Some(f64::NEG_INFINITY));
    std::fs::write(&path, "{\"beta_start\": oops}").unwrap();
    let err = SchedulerConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("scheduler_config.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_options_are_refused() {
    let mut config: SchedulerConfig = serde_json::from_str(SD21_BASE).unwrap();
    config.use_karras_sigmas = Some(true);
    let err = build(SchedulerKind::DpmSolverMultistep, &config, 10)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use_karras_sigmas"), "{err}");
    let mut scheduler = build(
        SchedulerKind::EulerAncestral,
        &SchedulerConfig::default(),
        5,
    )
    .unwrap();
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(
        scheduler.step(&x, 0, &x, None).is_err(),
        "Euler ancestral needs noise"
    );
    assert!(build(SchedulerKind::Ddim, &config, 0).is_err());
}
