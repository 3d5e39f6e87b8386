//! The CLIP tokenizer against the token ids of transformers' `CLIPTokenizer` (fixtures/reference/*/tokens.json).

use std::path::{Path, PathBuf};

use persona_diffusion::tokenizer::ClipTokenizer;
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[derive(Deserialize)]
struct Entry {
    prompt: String,
    ids: Vec<u32>,
    added_tokens: Vec<String>,
}

/// Every pipeline with a tokens.json, and its tokenizer folder.
fn pipelines() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(fixtures().join("reference"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("tokens.json").is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let dir = fixtures().join(&name).join("tokenizer");
            (name, dir)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn ids_match_transformers() {
    let pipelines = pipelines();
    assert!(
        pipelines.len() >= 2,
        "expected sd1-tiny and sd2-tiny references"
    );
    for (name, dir) in pipelines {
        let base = ClipTokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let entries: Vec<Entry> = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("reference").join(&name).join("tokens.json"))
                .unwrap(),
        )
        .unwrap();
        for entry in entries {
            let mut tokenizer = base.clone();
            if !entry.added_tokens.is_empty() {
                let ids = tokenizer.add_tokens(&entry.added_tokens).unwrap();
                let first = base.vocab_size() as u32;
                assert_eq!(
                    ids,
                    (first..first + ids.len() as u32).collect::<Vec<_>>(),
                    "{name}: added ids"
                );
            }
            let got = tokenizer.encode(&entry.prompt).unwrap();
            assert_eq!(got, entry.ids, "{name}: {:?}", entry.prompt);
        }
    }
}

#[test]
fn both_layouts_agree_except_padding() {
    let sd1 = ClipTokenizer::from_dir(fixtures().join("sd1-tiny/tokenizer")).unwrap(); // vocab.json + merges.txt
    let sd2 = ClipTokenizer::from_dir(fixtures().join("sd2-tiny/tokenizer")).unwrap(); // tokenizer.json
    assert_eq!((sd1.pad_id(), sd2.pad_id()), (49407, 0));
    for t in [&sd1, &sd2] {
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.max_length(), t.vocab_size()),
            (49406, 49407, 77, 49408)
        );
    }
    let text = "A photo of Tom Cruise, 1024 dogs & café";
    assert_eq!(
        sd1.encode_unpadded(text).unwrap(),
        sd2.encode_unpadded(text).unwrap()
    );
}

#[test]
fn spec_test_vectors() {
    let t = ClipTokenizer::from_dir(fixtures().join("sd2-tiny/tokenizer")).unwrap();
    for (text, ids) in [
        ("a photo of a face of", vec![320, 1125, 539, 320, 1710, 539]),
        ("person", vec![2533]),
        ("Tom Cruise", vec![2435, 6764]),
        ("Kunal Nayyar", vec![6849, 566, 11704, 23071]),
        // SD 2 pads with "!", which HF registers as a special token: every "!" becomes id 0.
        ("wow!!!", vec![2781, 0, 0, 0]),
    ] {
        let got = t.encode_unpadded(text).unwrap();
        assert_eq!(got[0], 49406);
        assert_eq!(got[got.len() - 1], 49407);
        assert_eq!(got[1..got.len() - 1], ids[..], "{text:?}");
        assert_eq!(t.token_id("person</w>"), Some(2533));
    }
}

#[test]
fn long_prompts_keep_the_eos() {
    let t = ClipTokenizer::from_dir(fixtures().join("sd1-tiny/tokenizer")).unwrap();
    let ids = t.encode(&"a photo of a person ".repeat(40)).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (49406, 49407));
    assert_eq!(t.encode_unpadded(&"dog ".repeat(100)).unwrap().len(), 77);
}

#[test]
fn adding_an_existing_token_fails() {
    let mut t = ClipTokenizer::from_dir(fixtures().join("sd2-tiny/tokenizer")).unwrap();
    assert!(t.add_tokens(&["person</w>".to_string()]).is_err());
    let ids = t
        .add_tokens(&["<v1>".to_string(), "<v2>".to_string()])
        .unwrap();
    assert_eq!(ids, [49408, 49409]);
    assert_eq!(t.token_id("<v2>"), Some(49409));
    assert!(t.add_tokens(&["<v1>".to_string()]).is_err());
}

#[test]
fn missing_or_corrupt_vocab_names_the_file() {
    let dir = std::env::temp_dir().join(format!("persona-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = ClipTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::write(dir.join("vocab.json"), "{\"a\": 0,").unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
    let err = ClipTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::write(dir.join("tokenizer.json"), "not json").unwrap();
    let err = ClipTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tokenizer saved after textual inversion carries its new tokens: `added_tokens.json` (hub layout) or
/// the `added_tokens` list of `tokenizer.json`.
#[test]
fn saved_added_tokens_load() {
    let dir = std::env::temp_dir().join(format!("persona-tok-added-{}", std::process::id()));
    let (hub, json) = (dir.join("hub"), dir.join("json"));
    for (from, to) in [("sd1-tiny", &hub), ("sd2-tiny", &json)] {
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(fixtures().join(from).join("tokenizer")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        hub.join("added_tokens.json"),
        r#"{"<v2>": 49409, "<v1>": 49408}"#,
    )
    .unwrap();
    let path = json.join("tokenizer.json");
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let added = serde_json::json!({"id": 49408, "content": "<v1>", "single_word": false, "lstrip": false,
                                    "rstrip": false, "normalized": true, "special": false});
    tj["added_tokens"].as_array_mut().unwrap().push(added);
    std::fs::write(&path, tj.to_string()).unwrap();

    let t = ClipTokenizer::from_dir(&hub).unwrap();
    assert_eq!(
        t.encode_unpadded("a <v1> <V2>").unwrap(),
        [49406, 320, 49408, 49409, 49407]
    );
    assert_eq!(t.vocab_size(), 49410);
    let t = ClipTokenizer::from_dir(&json).unwrap();
    assert_eq!(
        t.encode_unpadded("<v1> wow!").unwrap(),
        [49406, 49408, 2781, 0, 49407]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
