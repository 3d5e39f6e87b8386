//! Finding a model on disk: a diffusers folder or a hub id in the local Hugging Face cache, and the weight
//! files of each component (plain, `variant` such as fp16, or sharded with an index).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Why `path` cannot be opened, in words: a symbolic-link loop, a dangling link, or simply missing.
pub fn missing_reason(path: &Path, what: &str) -> String {
    match (std::fs::symlink_metadata(path), std::fs::metadata(path)) {
        (Ok(_), Err(e)) if e.raw_os_error() == Some(40) => {
            "is a loop of symbolic links (a link that leads back to itself)".into()
        }
        (Ok(_), Err(_)) => format!("is a symbolic link to a {what} that does not exist"),
        _ => format!("no such {what}"),
    }
}

/// Resolves `--model`: an existing folder, or a hub id (`org/name`) found in the local Hugging Face cache
/// (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`). Nothing is downloaded.
pub fn resolve_model(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.is_dir() {
        return require_index(path);
    }
    let looks_like_hub_id =
        name.split('/').count() == 2 && !name.starts_with('.') && !path.exists();
    if looks_like_hub_id {
        for cache in hub_caches() {
            if let Some(snapshot) = hub_snapshot(&cache, name)? {
                return require_index(snapshot);
            }
        }
        let tried: Vec<String> = hub_caches()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(Error::Msg(format!(
            "model {name}: not a folder, and not found in the Hugging Face cache ({}); download it with \
             `huggingface-cli download {name}` on a machine with access, or pass a diffusers folder",
            tried.join(", ")
        )));
    }
    Err(Error::file(&path, missing_reason(&path, "model folder")))
}

fn require_index(dir: PathBuf) -> Result<PathBuf> {
    if dir.join("model_index.json").is_file() {
        Ok(dir)
    } else {
        Err(Error::file(
            dir.join("model_index.json"),
            "missing: not a diffusers pipeline folder",
        ))
    }
}

fn hub_caches() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        out.push(PathBuf::from(p).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    out
}

/// `models--org--name/snapshots/<rev>` where `<rev>` is what `refs/main` names, else the newest snapshot.
fn hub_snapshot(cache: &Path, id: &str) -> Result<Option<PathBuf>> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if !snapshots.is_dir() {
        return Ok(None);
    }
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.is_dir() {
            return Ok(Some(dir));
        }
    }
    let newest = std::fs::read_dir(&snapshots)
        .map_err(|e| Error::io(&snapshots, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    Ok(newest.map(|e| e.path()))
}

/// The safetensors files holding one component's weights. `stem` is `diffusion_pytorch_model` (UNet, VAE)
/// or `model` (text encoders). With `variant` (e.g. `fp16`) only that variant's files are taken; without it
/// the plain files are preferred, and a folder holding a single variant only is used as is (diffusers would
/// refuse; a user with an fp16-only download expects it to load).
pub fn component_files(dir: &Path, stem: &str, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "missing component folder"));
    }
    let found = match variant {
        Some(v) => files_for_variant(dir, stem, Some(v))?,
        None => match files_for_variant(dir, stem, None)? {
            Some(files) => Some(files),
            None => {
                let variants = variants_present(dir, stem)?;
                match variants.iter().collect::<Vec<_>>().as_slice() {
                    [only] => files_for_variant(dir, stem, Some(only))?,
                    _ => None,
                }
            }
        },
    };
    found.ok_or_else(|| {
        let want = match variant {
            Some(v) => format!("{stem}.{v}.safetensors (or a sharded index)"),
            None => format!("{stem}.safetensors (or a sharded index)"),
        };
        Error::file(dir, format!("no weights: expected {want}; .bin/.ckpt checkpoints are not read, convert them to safetensors"))
    })
}

/// The variant names in a folder, from files like `stem.fp16.safetensors` or `stem.fp16-00001-of-00002.safetensors`.
fn variants_present(dir: &Path, stem: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for name in file_names(dir)? {
        let Some(rest) = name.strip_prefix(&format!("{stem}.")) else {
            continue;
        };
        let Some(middle) = rest.strip_suffix(".safetensors") else {
            continue;
        };
        let variant = middle.split('-').next().unwrap_or("");
        if !variant.is_empty() && !variant.contains('.') {
            out.insert(variant.to_string());
        }
    }
    Ok(out)
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

fn files_for_variant(
    dir: &Path,
    stem: &str,
    variant: Option<&str>,
) -> Result<Option<Vec<PathBuf>>> {
    let (single, index) = match variant {
        Some(v) => (
            format!("{stem}.{v}.safetensors"),
            format!("{stem}.safetensors.index.{v}.json"),
        ),
        None => (
            format!("{stem}.safetensors"),
            format!("{stem}.safetensors.index.json"),
        ),
    };
    let index_path = dir.join(&index);
    if index_path.is_file() {
        return shards_from_index(&index_path).map(Some);
    }
    let single_path = dir.join(single);
    Ok(single_path.is_file().then(|| vec![single_path]))
}

/// The shard files an index's `weight_map` names, each checked to exist.
fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let parsed: Index = crate::nn::read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::file(
                    index,
                    format!("names shard {f}, which is missing"),
                ))
            }
        })
        .collect()
}
