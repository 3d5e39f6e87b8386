//! Issue #13: bad input and faults give one line naming the file or flag, exit 2, and leave nothing written or
//! overwritten. See docs/reliability.md for the table these tests prove.

use crate::common::{persona, tiny};
use std::path::{Path, PathBuf};
use std::process::Output;

/// The error line of a failed run: exit 2 and exactly one line on stderr besides the device note.
pub(crate) fn one_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the tiny pipeline that a test may damage.
pub(crate) fn tiny_copy(dir: &Path) -> PathBuf {
    let to = dir.join("model");
    for entry in walk(Path::new(&tiny())) {
        let rel = entry.strip_prefix(tiny()).unwrap();
        let target = to.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    to
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub(crate) fn generate(model: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "a photo",
        "--steps",
        "1",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    persona(&args)
}

/// A PNG whose header declares 50000×50000 pixels (a few dozen bytes on disk).
fn bomb_png(path: &Path) {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let body = [kind, data].concat();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // zlib stream of one stored empty block.
    let idat = [
        0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x01,
    ];
    let bytes = [
        b"\x89PNG\r\n\x1a\n".to_vec(),
        chunk(b"IHDR", &ihdr),
        chunk(b"IDAT", &idat),
        chunk(b"IEND", &[]),
    ]
    .concat();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn reliability_decompression_bomb_is_refused_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let bomb = photos.join("bomb.png");
    bomb_png(&bomb);
    let line = one_error(&persona(&[
        "faces",
        "detect",
        "--detector",
        "none",
        s(&bomb),
    ]));
    assert!(
        line.contains("bomb.png") && line.contains("50000x50000"),
        "{line}"
    );
    let out = tmp.path().join("id.safetensors");
    let o = persona(&[
        "train",
        "--model",
        &tiny(),
        "--images",
        s(&photos),
        "--token",
        "<a>",
        "--method",
        "ti",
        "--steps",
        "1",
        "--resolution",
        "32",
        "--detector",
        "none",
        "--out",
        s(&out),
    ]);
    let line = one_error(&o);
    assert!(
        line.contains("bomb.png") && line.contains("refused before decoding"),
        "{line}"
    );
    assert!(!out.exists());
}

/// A JPEG without its end-of-image marker (decoders would fill the rest with grey) is refused as truncated; a
/// PNG cut short fails in its decoder. Either way the error names the file.
#[test]
fn reliability_truncated_images_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("whole.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 90]))
        .save(&png)
        .unwrap();
    let jpg = persona_diffusion::testing::fixtures_dir().join("faces/photos/grace_hopper.jpg");
    for (whole, name, says) in [(jpg, "cut.jpg", "truncated"), (png, "cut.png", "cut.png")] {
        let bytes = std::fs::read(whole).unwrap();
        let cut = tmp.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let line = one_error(&persona(&[
            "faces",
            "detect",
            "--detector",
            "none",
            s(&cut),
        ]));
        assert!(line.contains(name) && line.contains(says), "{line}");
    }
}

#[test]
fn reliability_huge_sample_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path());
    let config = model.join("unet/config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["sample_size"] = 1_000_000.into();
    std::fs::write(&config, c.to_string()).unwrap();
    let out = tmp.path().join("out");
    let line = one_error(&generate(s(&model), &out, &[]));
    assert!(
        line.contains("unet/config.json") && line.contains("sample_size 1000000"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn reliability_nan_weights_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path());
    let file = model.join("vae/diffusion_pytorch_model.safetensors");
    let mut t = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let name = t.keys().find(|k| k.ends_with("weight")).unwrap().clone();
    let w = &t[&name];
    let nan = (w.ones_like().unwrap() * f64::NAN).unwrap();
    t.insert(name.clone(), nan);
    candle_core::safetensors::save(&t, &file).unwrap();
    let out = tmp.path().join("out");
    let line = one_error(&generate(s(&model), &out, &[]));
    assert!(
        line.contains("vae/diffusion_pytorch_model.safetensors")
            && line.contains(&name)
            && line.contains("NaN"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn reliability_nan_latents_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let lat = tmp.path().join("lat.safetensors");
    let t = (candle_core::Tensor::ones(
        (1, 4, 4, 4),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
        * f64::INFINITY)
        .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), t)]),
        &lat,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let line = one_error(&generate(&tiny(), &out, &["--latents", s(&lat)]));
    assert!(
        line.contains("lat.safetensors") && line.contains("NaN or infinite"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn reliability_refused_generate_leaves_no_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("X");
    let line = one_error(&generate(&tiny(), &out, &["--clip-skip", "50"]));
    assert!(line.contains("clip skip 50"), "{line}");
    assert!(!out.exists(), "a refused command created its output folder");
    // eval and compare make their folder first (results go there as they come), and remove it again when
    // they fail before writing anything: here, a recogniser that does not exist.
    let photos = persona_diffusion::testing::fixtures_dir().join("faces/photos");
    let faces = ["--detector", "none", "--recognizer", "missing.onnx"];
    let mut args = vec!["eval", "--images", s(&photos), "--references", s(&photos)];
    args.extend(faces);
    args.extend(["--out", s(&out)]);
    let line = one_error(&persona(&args));
    assert!(line.contains("missing.onnx"), "{line}");
    assert!(!out.exists(), "a refused eval left its output folder");
}

#[test]
fn reliability_generate_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("0000.png"), b"precious").unwrap();
    let line = one_error(&generate(&tiny(), &out, &[]));
    assert!(
        line.contains("0000.png") && line.contains("--overwrite"),
        "{line}"
    );
    assert_eq!(std::fs::read(out.join("0000.png")).unwrap(), b"precious");
    assert!(!out.join("params.json").exists());
    let o = generate(&tiny(), &out, &["--overwrite"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(std::fs::read(out.join("0000.png")).unwrap(), b"precious");
}

#[test]
fn reliability_generate_checks_out_is_writable_first() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let line = one_error(&generate(&tiny(), &file.join("out"), &[]));
    assert!(
        line.contains("--out") && line.contains("not a folder"),
        "{line}"
    );
}

#[test]
fn reliability_long_prompt_warns_which_words_are_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let prompt = format!("{} elephant", "a photo of a person ".repeat(20));
    let o = persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        &prompt,
        "--steps",
        "1",
        "--out",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("WARN") && err.contains("77 tokens") && err.contains("elephant"),
        "{err}"
    );
}

/// The arguments of a tiny training run at 32 px (`steps` steps of `ti` on one photo, copied into `dir`).
pub(crate) fn train_tiny_args(dir: &Path, out: &Path, steps: usize) -> Vec<String> {
    let photos = dir.join("photos");
    if !photos.exists() {
        std::fs::create_dir(&photos).unwrap();
        let src = persona_diffusion::testing::fixtures_dir().join("faces/photos/t1.jpg");
        std::fs::copy(src, photos.join("t1.jpg")).unwrap();
    }
    let (photos, out, steps) = (
        s(&photos).to_string(),
        s(out).to_string(),
        steps.to_string(),
    );
    let args = [
        "train",
        "--model",
        &tiny(),
        "--images",
        &photos,
        "--token",
        "<a>",
        "--method",
        "ti",
        "--steps",
        &steps,
        "--resolution",
        "32",
        "--detector",
        "none",
        "--out",
        &out,
    ];
    args.iter().map(|a| a.to_string()).collect()
}

/// A tiny identity trained for 2 steps at 32 px.
fn train_tiny(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = train_tiny_args(dir, out, 2);
    args.extend(extra.iter().map(|a| a.to_string()));
    persona(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn reliability_training_lock_checkpoint_resume_and_identity_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("id.safetensors");
    // A lock left by a run killed with SIGKILL (pid that cannot exist): refused at once, naming pid and fix.
    let lock = tmp.path().join("id.safetensors.lock");
    std::fs::write(&lock, "4194999\n").unwrap();
    let line = one_error(&train_tiny(tmp.path(), &out, &[]));
    assert!(
        line.contains("locked")
            && line.contains("4194999")
            && line.contains("delete the lock file"),
        "{line}"
    );
    assert!(!out.exists());
    std::fs::remove_file(&lock).unwrap();

    let o = train_tiny(tmp.path(), &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!lock.exists(), "the lock is removed on exit");
    let ckpt = tmp.path().join("id.ckpt.safetensors");
    let before = (std::fs::read(&out).unwrap(), std::fs::read(&ckpt).unwrap());

    // --resume of a finished run changes nothing.
    let o = train_tiny(tmp.path(), &out, &["--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        before,
        (std::fs::read(&out).unwrap(), std::fs::read(&ckpt).unwrap())
    );

    // A fresh run onto another --out with the same checkpoint does not discard it.
    let other = tmp.path().join("id.st");
    let line = one_error(&train_tiny(tmp.path(), &other, &[]));
    assert!(
        line.contains("id.ckpt.safetensors") && line.contains("--resume"),
        "{line}"
    );
    assert_eq!(before.1, std::fs::read(&ckpt).unwrap());

    // export IN IN.
    let line = one_error(&persona(&[
        "export",
        "--format",
        "a1111",
        s(&out),
        s(&out),
        "--overwrite",
    ]));
    assert!(line.contains("is IN"), "{line}");
    assert_eq!(before.0, std::fs::read(&out).unwrap());

    // The same identity twice.
    let gen_out = tmp.path().join("gen");
    let line = one_error(&persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "{} x",
        "--steps",
        "1",
        "--identity",
        s(&out),
        "--identity",
        s(&out),
        "--out",
        s(&gen_out),
    ]));
    assert!(line.contains("given twice"), "{line}");
    assert!(!gen_out.exists());

    // A damaged identity (NaN row) is refused naming the file.
    let mut t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let e = t["embeddings"].clone();
    t.insert(
        "embeddings".into(),
        (e.ones_like().unwrap() * f64::NAN).unwrap(),
    );
    let header = safetensors::SafeTensors::read_metadata(&std::fs::read(&out).unwrap())
        .unwrap()
        .1;
    let meta = header.metadata().clone();
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = t
        .iter()
        .map(|(k, v)| {
            let v = v
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                t[k].dims().to_vec(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, d.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, safetensors::serialize(views, meta).unwrap()).unwrap();
    let line = one_error(&persona(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "{} x",
        "--steps",
        "1",
        "--identity",
        s(&bad),
        "--out",
        s(&gen_out),
    ]));
    assert!(
        line.contains("bad.safetensors") && line.contains("NaN"),
        "{line}"
    );
}

#[test]
fn reliability_messages_name_the_real_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A model's weights file given as an identity.
    let weights = Path::new(&tiny()).join("unet/diffusion_pytorch_model.safetensors");
    let line = one_error(&generate(&tiny(), &out, &["--identity", s(&weights)]));
    assert!(line.contains("not a persona identity file"), "{line}");
    // A symbolic-link loop.
    let (a, b) = (tmp.path().join("loop1"), tmp.path().join("loop2"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let line = one_error(&generate(s(&a), &out, &[]));
    assert!(
        line.contains("loop1") && line.contains("loop of symbolic links"),
        "{line}"
    );
    // The tokenizer file that is actually missing.
    let model = tiny_copy(tmp.path());
    std::fs::remove_file(model.join("tokenizer/tokenizer.json")).unwrap();
    let line = one_error(&generate(s(&model), &out, &[]));
    assert!(
        line.contains("tokenizer/tokenizer.json") && line.contains("missing"),
        "{line}"
    );
    // No doubled OS error text.
    let line = one_error(&persona(&[
        "export",
        "--format",
        "a1111",
        s(&tmp.path().join("none.safetensors")),
        s(&tmp.path().join("x.safetensors")),
    ]));
    assert_eq!(line.matches("os error").count(), 1, "{line}");
    assert!(!out.exists());
}

#[test]
fn reliability_values_no_run_can_use_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for (flag, value) in [
        ("--guidance", "nan"),
        ("--height", "0"),
        ("--width", "4000000"),
        ("--num-images", "0"),
    ] {
        // clap's message, on one line naming the flag.
        let line = one_error(&generate(&tiny(), &out, &[flag, value]));
        assert!(line.contains(flag), "{line}");
    }
    let line = one_error(&generate(
        &tiny(),
        &out,
        &["--seed", "18446744073709551615", "--num-images", "2"],
    ));
    assert!(line.contains("largest seed"), "{line}");
    // Training's real-valued flags: a learning rate or weight no run can use (NaN used to train, writing NaN).
    let id = tmp.path().join("id.safetensors");
    for (flag, value) in [
        ("--lr", "nan"),
        ("--lr", "-0.1"),
        ("--adam-eps", "0"),
        ("--reg-weight", "inf"),
    ] {
        let line = one_error(&train_tiny(tmp.path(), &id, &[flag, value]));
        assert!(line.contains(flag), "{line}");
    }
    assert!(!id.exists());
    let line = one_error(&persona(&["bench", "--runs", "0"]));
    assert!(line.contains("--runs"), "{line}");
    assert!(!out.exists());
}
