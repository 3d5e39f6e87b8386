//! `--device` / `--dtype` from the command line, and the GPU tooling's CPU paths: every model command has the
//! flags; `cuda` on a build without CUDA is a one-line usage error; `auto` runs on the CPU with a note;
//! `bench equality --devices cpu,cpu` passes; `bench make-model` writes a pipeline that loads.

use crate::common::{persona, tiny};

use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};

fn stdout_json(o: &std::process::Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {out}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn every_model_command_has_the_device_flags() {
    let commands: [&[&str]; 11] = [
        &["generate"],
        &["train"],
        &["eval"],
        &["compare"],
        &["attention"],
        &["bench", "unet"],
        &["bench", "text-encoder"],
        &["bench", "train-step"],
        &["bench", "generate"],
        &["bench", "conv"],
        &["bench", "make-model"],
    ];
    for cmd in commands {
        let o = persona(&[cmd, &["--help"]].concat());
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{cmd:?}");
        assert!(
            help.contains("--dtype <f32|bf16|f16>"),
            "{cmd:?} lacks --dtype:\n{help}"
        );
        if cmd != ["bench", "make-model"] {
            assert!(
                help.contains("--device <auto|cpu|cuda[:N]>")
                    && help.contains("the CPU with a one-line note"),
                "{cmd:?}:\n{help}"
            );
        }
    }
    let faces = String::from_utf8_lossy(&persona(&["faces", "--help"]).stdout).into_owned();
    assert!(!faces.contains("--device"), "faces stays on the CPU");
    let bad = persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "x",
        "--out",
        "o",
        "--device",
        "gpu",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected auto, cpu, cuda or cuda:N"));
}

#[test]
fn cuda_without_cuda_is_a_one_line_usage_error() {
    if persona_diffusion::device::cuda_compiled() {
        eprintln!("skipping: this build has CUDA");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let runs: [&[&str]; 2] = [
        &[
            "generate",
            "--model",
            &tiny(),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cuda",
        ],
        &[
            "bench",
            "equality",
            "--model",
            &tiny(),
            "--devices",
            "cpu,cuda",
        ],
    ];
    for args in runs {
        let o = persona(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: --device cuda:0: this persona was built without CUDA"),
            "{err}"
        );
    }
    assert!(!out.exists(), "nothing was written");
}

#[test]
fn auto_runs_on_the_cpu_with_a_note_and_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "a person",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    if !persona_diffusion::device::cuda_compiled() {
        assert!(
            err.contains("note: running on the CPU: this persona was built without CUDA"),
            "{err}"
        );
    }
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("params.json")).unwrap()).unwrap();
    if params["device"] == "cpu" {
        assert_eq!(params["dtype"], "f32", "the CPU's default dtype");
    }
    let o = persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "a person",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("note:"),
        "an explicit device needs no note"
    );
}

#[test]
fn bench_equality_cpu_against_cpu_passes() {
    let o = persona(&[
        "bench",
        "equality",
        "--model",
        &tiny(),
        "--devices",
        "cpu,cpu",
        "--steps",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let j = stdout_json(&o);
    assert_eq!(j["passed"], true);
    let rows = j["rows"].as_array().unwrap();
    for want in [
        "image ddim f32",
        "image dpm++2m f32",
        "image euler f32",
        "train ti loss",
        "train crossinit ∂embeddings",
        "train idea ∂adapter.gamma",
        "train sefi loss",
    ] {
        assert!(
            rows.iter().any(|r| r["what"] == want),
            "no row {want}: {rows:?}"
        );
    }
    // The same device computes exactly the same numbers.
    assert!(
        rows.iter()
            .filter(|r| r["enforced"] == true)
            .all(|r| r["value"] == 0.0),
        "{rows:?}"
    );
    assert!(
        err.contains("cuBLAS"),
        "the table states why the tolerances are not zero"
    );
}

#[test]
fn make_model_writes_a_loadable_diffusers_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let o = persona(&[
        "bench",
        "make-model",
        "--arch",
        "tiny",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout_json(&o)["parameters"].as_u64().unwrap() > 0);
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
        "text_encoder/model.safetensors",
        "unet/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let sd = StableDiffusion::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(sd.default_size(), 32);
    let again = persona(&[
        "bench",
        "make-model",
        "--arch",
        "tiny",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty")
    );
    // bf16 files load too (converted to the requested dtype).
    let half = tmp.path().join("h");
    let o = persona(&[
        "bench",
        "make-model",
        "--arch",
        "tiny",
        "--dtype",
        "bf16",
        "--out",
        half.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    StableDiffusion::load(half.to_str().unwrap(), &LoadOptions::default()).unwrap();
}

#[test]
fn bench_generate_and_train_step_report_json() {
    let o = persona(&[
        "bench", "generate", "--arch", "tiny", "--steps", "2", "--size", "16", "--runs", "1",
        "--device", "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = stdout_json(&o);
    assert_eq!(
        (
            j["part"].as_str(),
            j["device"].as_str(),
            j["dtype"].as_str()
        ),
        (Some("Generate"), Some("cpu"), Some("f32"))
    );
    assert!(j["median_s"].as_f64().unwrap() > 0.0);
    let o = persona(&[
        "bench",
        "train-step",
        "--arch",
        "tiny",
        "--method",
        "idea",
        "--batch",
        "2",
        "--size",
        "16",
        "--runs",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = stdout_json(&o);
    assert!(
        j["peak_rss_gb"].as_f64().unwrap() > 0.0 && j.get("peak_gpu_gb").is_none(),
        "{j}"
    );
}

/// SDXL in the benchmarks: the UNet with pooled text and time ids, both encoders, and a training step whose
/// gradient reaches both token tables and nothing else (the command checks that and fails otherwise).
#[test]
fn bench_runs_sdxl_parts() {
    for part in ["unet", "text-encoder", "train-step"] {
        let o = persona(&[
            "bench",
            part,
            "--arch",
            "sdxl-tiny",
            "--size",
            "8",
            "--batch",
            "2",
            "--runs",
            "1",
            "--device",
            "cpu",
        ]);
        assert!(
            o.status.success(),
            "{part}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(stdout_json(&o)["arch"].as_str(), Some("SdxlTiny"), "{part}");
    }
    let o = persona(&[
        "bench",
        "train-step",
        "--arch",
        "sdxl-tiny",
        "--method",
        "idea",
        "--size",
        "8",
        "--runs",
        "1",
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--method tokens only"));
}

/// Values no run can use are refused by name before anything loads, and nothing is written.
#[test]
fn unusable_numbers_are_refused_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let model = tiny();
    for (flag, value) in [
        ("--num-images", "0"),
        ("--batch-size", "0"),
        ("--steps", "0"),
        ("--guidance", "nan"),
        ("--guidance", "-1"),
        ("--height", "4000000"),
        ("--width", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let o = persona(&[
            "generate", "--model", &model, "--prompt", "x", "--out", out, &arg,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(
            !std::path::Path::new(out).exists(),
            "{flag} {value}: an output folder was made"
        );
    }
    for (flag, value) in [
        ("--batch-size", "0"),
        ("--grad-accum", "0"),
        ("--repeats", "0"),
        ("--steps", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let o = persona(&[
            "train", "--model", &model, "--images", "x", "--token", "<a>", "--out", out, &arg,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "train {flag} {value}: {err}");
        assert!(err.contains(flag), "train {flag} {value}: {err}");
    }
}
