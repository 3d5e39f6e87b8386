//! Import of every supported layout (including a hostile pickle) and export round trips of identity files.

use std::path::Path;

use persona_identity::{export_a1111, export_diffusers, import, EmbeddingFormat, Identity};

use crate::identity::{err_text, files_in, fixture, model, python_rows, rows, tiny_identity};

/// Norms and cosine of the two vectors, as torch computes them
/// (`torch.load(path, weights_only=True)`, `v.norm()`, `cosine_similarity`): the spec's "norm 33–35,
/// cos 0.14–0.19" describes these files only roughly (32.94 and 0.137 fall just outside).
const CROSS_INIT_FILES: [(&str, [f32; 2], f32); 2] = [
    ("28017", [32.94293, 33.57206], 0.1567006),
    ("28021", [34.55017, 33.55111], 0.136954),
];

#[test]
fn imports_the_official_cross_init_files() {
    for (name, norms, cos) in CROSS_INIT_FILES {
        let Some(path) =
            persona_diffusion::testing::shared(&format!("data/embeddings/crossinit/{name}.bin"))
        else {
            return;
        };
        let imported = import(&path).unwrap();
        assert_eq!(imported.format, EmbeddingFormat::TokenMap);
        assert_eq!(imported.token.as_deref(), Some(name));
        let v = rows(&imported.vectors);
        assert_eq!((v.len(), v[0].len()), (2, 1024));
        let norm = |a: &[f32]| a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine =
            v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum::<f32>() / (norm(&v[0]) * norm(&v[1]));
        for (row, expected) in v.iter().zip(norms) {
            assert!(
                (norm(row) - expected).abs() < 1e-3,
                "{name}: norm {} vs {expected}",
                norm(row)
            );
            assert!(
                (32.5..=35.0).contains(&norm(row)),
                "{name}: norm {}",
                norm(row)
            );
        }
        assert!((cosine - cos).abs() < 1e-4, "{name}: cos {cosine} vs {cos}");
        assert!((0.13..=0.16).contains(&cosine), "{name}: cos {cosine}");

        let identity = Identity::from_imported(imported, Some("<person>"), None).unwrap();
        assert_eq!(identity.tokens, ["<person>_v0", "<person>_v1"]);
        assert_eq!(identity.meta.method, "imported");
    }
}

#[test]
fn imports_diffusers_files() {
    for name in ["diffusers.bin", "diffusers.safetensors"] {
        let imported = import(fixture(name)).unwrap();
        assert_eq!(imported.format, EmbeddingFormat::TokenMap, "{name}");
        assert_eq!(imported.token.as_deref(), Some("<tiny>"), "{name}");
        assert_eq!(rows(&imported.vectors), python_rows(2, 32), "{name}");
    }
}

#[test]
fn imports_a1111_files() {
    let pt = import(fixture("a1111.pt")).unwrap();
    assert_eq!(pt.format, EmbeddingFormat::A1111Pt);
    assert_eq!(pt.token.as_deref(), Some("tiny-a1111"));
    assert_eq!(rows(&pt.vectors), python_rows(3, 32));

    let st = import(fixture("a1111.safetensors")).unwrap();
    assert_eq!(st.format, EmbeddingFormat::A1111Safetensors);
    assert_eq!(st.token.as_deref(), Some("a1111"));
    assert_eq!(rows(&st.vectors), python_rows(3, 32));

    let sdxl = import(fixture("a1111_sdxl.safetensors")).unwrap();
    assert_eq!(sdxl.format, EmbeddingFormat::A1111Sdxl);
    assert_eq!(rows(&sdxl.vectors), python_rows(2, 32));
    assert_eq!(rows(&sdxl.modules["sdxl.clip_g"]), python_rows(2, 48));
}

#[test]
fn imports_half_precision_strided_learned_embeds() {
    let imported = import(fixture("learned_embeds_f16.bin")).unwrap();
    assert_eq!(imported.token.as_deref(), Some("<h>"));
    let expected = python_rows(2, 32);
    assert_eq!(
        rows(&imported.vectors),
        vec![expected[0].clone(), expected[1].clone()]
    );
}

#[test]
fn imports_a_bare_tensor_given_a_token() {
    let imported = import(fixture("bare.pt")).unwrap();
    assert_eq!(
        (imported.format, imported.token.as_deref()),
        (EmbeddingFormat::BareTensor, None)
    );
    assert_eq!(rows(&imported.vectors), python_rows(2, 32));
    let text = err_text(Identity::from_imported(imported.clone(), None, None));
    assert!(
        text.contains("bare torch tensor file names no token"),
        "{text}"
    );
    assert_eq!(
        Identity::from_imported(imported, Some("<b>"), None)
            .unwrap()
            .tokens,
        ["<b>_v0", "<b>_v1"]
    );
}

#[test]
fn refuses_a_malicious_pickle_without_running_it() {
    let marker = Path::new("/tmp/persona_identity_pwned");
    let _ = std::fs::remove_file(marker);
    let text = err_text(import(fixture("malicious.bin")));
    assert!(
        text.contains("malicious.bin") && text.contains("refused") && text.contains("posix.system"),
        "{text}"
    );
    let text = err_text(import(fixture("malicious.pkl")));
    assert!(
        text.contains("malicious.pkl") && text.contains("plain pickle"),
        "{text}"
    );
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn import_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello").unwrap();
    let text = err_text(import(&path));
    assert!(
        text.contains("notes.txt")
            && text.contains("neither a torch zip archive nor a safetensors file"),
        "{text}"
    );

    let identity = dir.path().join("alice.safetensors");
    tiny_identity().save(&identity).unwrap();
    let text = err_text(import(&identity));
    assert!(text.contains("already a persona-identity file"), "{text}");
}

#[test]
fn from_imported_token_and_base_rules() {
    let st = import(fixture("a1111.safetensors")).unwrap();
    let mut nameless = st.clone();
    nameless.token = None;
    let text = err_text(Identity::from_imported(nameless, None, None));
    assert!(
        text.contains("names no token") && text.contains("--token"),
        "{text}"
    );

    let identity =
        Identity::from_imported(st.clone(), Some("<bob>"), Some(model("sd2-tiny"))).unwrap();
    assert_eq!(identity.token, "<bob>");
    assert_eq!(identity.meta.base_model, model("sd2-tiny"));
    assert_eq!(
        identity.meta.hyper["imported_from"],
        "AUTOMATIC1111 safetensors (emb_params)"
    );
    let text = err_text(Identity::from_imported(st, None, Some(model("sd2-unseen"))));
    assert!(
        text.contains("32 wide") && text.contains("24-wide"),
        "{text}"
    );
}

#[test]
fn export_then_import_gives_the_same_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let identity = tiny_identity();

    let diffusers = dir.path().join("alice-diffusers.safetensors");
    export_diffusers(&identity, &diffusers).unwrap();
    let file = safetensors::SafeTensors::deserialize(&std::fs::read(&diffusers).unwrap())
        .unwrap()
        .names()
        .len();
    assert_eq!(
        file, 1,
        "diffusers reads a single-key file as {{token: vectors}}"
    );
    let back = import(&diffusers).unwrap();
    assert_eq!(back.token.as_deref(), Some("<alice>"));
    assert_eq!(rows(&back.vectors), rows(&identity.embeddings));

    let a1111 = dir.path().join("alice.safetensors");
    export_a1111(&identity, &a1111).unwrap();
    let back = import(&a1111).unwrap();
    assert_eq!(back.format, EmbeddingFormat::A1111Safetensors);
    assert_eq!(back.token.as_deref(), Some("alice"));
    assert_eq!(rows(&back.vectors), rows(&identity.embeddings));
    assert_eq!(
        files_in(dir.path()),
        ["alice-diffusers.safetensors", "alice.safetensors"]
    );
}

#[test]
fn sdxl_identities_export_clip_l_and_clip_g() {
    let dir = tempfile::tempdir().unwrap();
    let imported = import(fixture("a1111_sdxl.safetensors")).unwrap();
    let identity = Identity::from_imported(imported, Some("<xl>"), None).unwrap();
    let saved = dir.path().join("xl-identity.safetensors");
    identity.save(&saved).unwrap();
    let identity = Identity::load(&saved).unwrap();

    let out = dir.path().join("xl.safetensors");
    export_a1111(&identity, &out).unwrap();
    let back = import(&out).unwrap();
    assert_eq!(back.format, EmbeddingFormat::A1111Sdxl);
    assert_eq!(rows(&back.vectors), python_rows(2, 32));
    assert_eq!(rows(&back.modules["sdxl.clip_g"]), python_rows(2, 48));
    assert_eq!(back.modules.len(), 1);
    let raw = safetensors_keys(&out);
    assert_eq!(raw, ["clip_g", "clip_l"]);

    // diffusers: one {token: rows} file per text encoder, read back as a pair.
    let d = dir.path().join("xl-d.safetensors");
    let written = export_diffusers(&identity, &d).unwrap();
    assert_eq!(written, [d.clone(), dir.path().join("xl-d_2.safetensors")]);
    assert_eq!(safetensors_keys(&written[0]), ["<xl>"]);
    assert_eq!(safetensors_keys(&written[1]), ["<xl>"]);
    let pair = persona_identity::import_diffusers_pair(&written[0], &written[1]).unwrap();
    assert_eq!(pair.token.as_deref(), Some("<xl>"));
    assert_eq!(rows(&pair.vectors), python_rows(2, 32));
    assert_eq!(rows(&pair.modules["sdxl.clip_g"]), python_rows(2, 48));
    let again = Identity::from_imported(pair, None, None).unwrap();
    assert!(again.is_sdxl());
    // one family's identity on the other's model is a one-line error
    let text = err_text(again.check_family(false, None));
    assert!(text.contains("SDXL") && !text.contains('\n'), "{text}");
    let text = err_text(tiny_identity().check_family(true, Some(48)));
    assert!(
        text.contains("SD 1.x/2.x") && !text.contains('\n'),
        "{text}"
    );
}

fn safetensors_keys(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

#[test]
fn exports_must_be_named_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let text = err_text(export_a1111(&tiny_identity(), dir.path().join("alice.pt")));
    assert!(
        text.contains("alice.pt") && text.contains("*.safetensors"),
        "{text}"
    );
    assert!(files_in(dir.path()).is_empty());
}
