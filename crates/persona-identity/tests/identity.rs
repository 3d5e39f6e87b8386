//! Identity files: save/load, base-model checks, atomic writes (import and export: `identity_io.rs`, which
//! shares the helpers here).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use persona_identity::{import, BaseModel, Identity, IdentityError, IdentityMeta};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures/identity").join(name)
}

pub(crate) fn model(name: &str) -> BaseModel {
    BaseModel::from_model_dir(repo().join("fixtures").join(name)).unwrap()
}

/// The rows `tools/identity/make_files.py` writes: `(i + 1) * 0.5 + j / 64`.
pub(crate) fn python_rows(n: usize, d: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..d)
                .map(|j| (i as f32 + 1.0) * 0.5 + j as f32 / 64.0)
                .collect()
        })
        .collect()
}

pub(crate) fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// A 2-token identity on sd2-tiny (d = 32) with a module and full metadata.
pub(crate) fn tiny_identity() -> Identity {
    let embeddings = Tensor::randn(0f32, 1.0, (2, 32), &Device::Cpu).unwrap();
    let hyper = serde_json::json!({ "steps": 50, "lr": 0.005, "seed": 7 });
    let mut meta = IdentityMeta::new("cross-init", model("sd2-tiny"), hyper);
    meta.face_model = Some("arcface-vit-t".into());
    let mut identity = Identity::new("<alice>", embeddings, meta).unwrap();
    identity.modules.insert(
        "adapter.gamma".into(),
        Tensor::new(&[0.25f32], &Device::Cpu).unwrap(),
    );
    identity
}

pub(crate) fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(crate) fn err_text<T: std::fmt::Debug>(result: Result<T, IdentityError>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn save_load_round_trip_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.safetensors");
    let identity = tiny_identity();
    identity.save(&path).unwrap();
    let back = Identity::load(&path).unwrap();
    assert_eq!(back.token, "<alice>");
    assert_eq!(back.tokens, ["<alice>_v0", "<alice>_v1"]);
    assert_eq!(rows(&back.embeddings), rows(&identity.embeddings));
    assert_eq!(back.modules.keys().collect::<Vec<_>>(), ["adapter.gamma"]);
    assert_eq!(
        back.modules["adapter.gamma"].to_vec1::<f32>().unwrap(),
        [0.25]
    );
    assert_eq!(back.meta, identity.meta);
    assert_eq!(back.meta.base_model.name, "sd2-tiny");
    assert_eq!(back.meta.base_model.embedding_shape, [49408, 32]);
    assert_eq!(back.meta.base_model.text_encoder_hash.len(), 64);
    assert!(back.meta.created.ends_with('Z'), "{}", back.meta.created);
}

#[test]
fn header_is_one_json_value_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.safetensors");
    tiny_identity().save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = header.metadata().clone().unwrap();
    assert_eq!(header["format"], "\"persona-identity\"");
    assert_eq!(header["format_version"], "1");
    assert_eq!(header["method"], "\"cross-init\"");
    assert_eq!(header["tokens"], r#"["<alice>_v0","<alice>_v1"]"#);
    assert_eq!(header["face_model"], "\"arcface-vit-t\"");
    let base: serde_json::Value = serde_json::from_str(&header["base_model"]).unwrap();
    assert_eq!(base["embedding_shape"], serde_json::json!([49408, 32]));
}

#[test]
fn base_model_checks() {
    let identity = tiny_identity();
    identity.check_base(&model("sd2-tiny"), false).unwrap();

    let other = err_text(identity.check_base(&model("sd1-tiny"), false));
    assert!(
        other.starts_with(
            "identity <alice> was trained for base model sd2-tiny (text encoder hash "
        ),
        "{other}"
    );
    assert!(
        other.contains(
            ", embeddings [49408, 32]); the model you loaded is sd1-tiny (text encoder hash "
        ),
        "{other}"
    );
    assert!(other.contains("--force"), "{other}");
    identity.check_base(&model("sd1-tiny"), true).unwrap();

    let narrow = identity.check_base(&model("sd2-unseen"), true);
    assert!(matches!(
        narrow,
        Err(IdentityError::BaseMismatch {
            width_differs: true,
            ..
        })
    ));
    let narrow = err_text(narrow);
    assert!(
        narrow.contains("embeddings [49408, 24]") && narrow.contains("widths differ"),
        "{narrow}"
    );
}

#[test]
fn unknown_base_is_checked_by_width_only() {
    let imported = import(fixture("diffusers.safetensors")).unwrap();
    let identity = Identity::from_imported(imported, None, None).unwrap();
    assert!(identity.meta.base_model.is_unknown());
    identity.check_base(&model("sd2-tiny"), false).unwrap();
    identity.check_base(&model("sd1-tiny"), false).unwrap();
    let text = err_text(identity.check_base(&model("sd2-unseen"), false));
    assert!(text.contains("unknown (embedding width 32)"), "{text}");
}

#[test]
fn base_model_hash_ignores_formatting_and_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(repo().join("fixtures/sd2-tiny/text_encoder/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["transformers_version"] = "4.0.0".into();
    let reformatted = dir.path().join("copy/text_encoder");
    std::fs::create_dir_all(&reformatted).unwrap();
    std::fs::write(
        reformatted.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let copy = BaseModel::from_model_dir(dir.path().join("copy")).unwrap();
    assert_eq!(copy.text_encoder_hash, model("sd2-tiny").text_encoder_hash);
    assert_eq!(copy.name, "copy");
}

#[test]
fn base_model_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = err_text(BaseModel::from_model_dir(dir.path()));
    assert!(text.contains("text_encoder/config.json"), "{text}");
}

#[test]
fn atomic_save_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.safetensors");
    let identity = tiny_identity();
    identity.save(&path).unwrap();
    identity.save(&path).unwrap();
    assert_eq!(files_in(dir.path()), ["alice.safetensors"]);

    let blocked = dir
        .path()
        .join("alice.safetensors")
        .join("inside.safetensors");
    assert!(identity.save(&blocked).is_err());
    assert_eq!(files_in(dir.path()), ["alice.safetensors"]);
    assert_eq!(
        rows(&Identity::load(&path).unwrap().embeddings),
        rows(&identity.embeddings)
    );
}

#[test]
fn save_refuses_an_inconsistent_identity() {
    let mut identity = tiny_identity();
    identity.tokens.pop();
    let dir = tempfile::tempdir().unwrap();
    let text = err_text(identity.save(dir.path().join("x.safetensors")));
    assert!(
        text.contains("1 pseudo-token names for 2 embedding rows"),
        "{text}"
    );
    assert!(files_in(dir.path()).is_empty());
}

/// Writes a safetensors file with the given tensors and header, bypassing `Identity::save`.
fn write_raw(path: &Path, tensors: &[(&str, Tensor)], header: &[(&str, &str)]) {
    let header = header
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let data: Vec<(&str, Tensor)> = tensors.to_vec();
    std::fs::write(path, safetensors::serialize(data, Some(header)).unwrap()).unwrap();
}

fn identity_header(identity: &Identity, path: &Path) -> Vec<(String, String)> {
    identity.save(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap().into_iter().collect()
}

#[test]
fn load_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let identity = tiny_identity();
    let good = identity_header(&identity, &dir.path().join("good.safetensors"));
    let with = |key: &str, value: &str| -> Vec<(String, String)> {
        good.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == key {
                        value.to_string()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    let emb = identity.embeddings.clone();
    let case = |name: &str, tensors: &[(&str, Tensor)], header: Vec<(String, String)>| {
        let path = dir.path().join(name);
        let header: Vec<(&str, &str)> = header
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        write_raw(&path, tensors, &header);
        let text = err_text(Identity::load(&path));
        assert!(text.contains(name), "error does not name the file: {text}");
        text
    };

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let text = err_text(Identity::load(&garbage));
    assert!(
        text.contains("garbage.safetensors") && text.contains("not a safetensors file"),
        "{text}"
    );

    let text = case(
        "missing.safetensors",
        &[("other", emb.clone())],
        good.clone(),
    );
    assert!(text.contains("missing tensor `embeddings`"), "{text}");
    let text = case(
        "plain.safetensors",
        &[("embeddings", emb.clone())],
        vec![("foo".into(), "1".into())],
    );
    assert!(text.contains("not a persona identity file"), "{text}");
    let text = case(
        "v2.safetensors",
        &[("embeddings", emb.clone())],
        with("format_version", "2"),
    );
    assert!(text.contains("format version 2 is not supported"), "{text}");
    let text = case(
        "badjson.safetensors",
        &[("embeddings", emb.clone())],
        with("hyper", "{not json"),
    );
    assert!(
        text.contains("bad metadata: key `hyper` is not JSON"),
        "{text}"
    );
    let text = case(
        "badbase.safetensors",
        &[("embeddings", emb.clone())],
        with("base_model", "\"sd2\""),
    );
    assert!(text.contains("bad metadata"), "{text}");
    let wide = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let text = case("width.safetensors", &[("embeddings", wide)], good.clone());
    assert!(
        text.contains("embeddings are 8 wide but the base model's are 32"),
        "{text}"
    );
}
