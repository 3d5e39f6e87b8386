//! Reading embeddings made by other tools, recognised by content (not by file extension, which is often wrong):
//!
//! | layout | container | token |
//! |---|---|---|
//! | `{token: [d] or [n, d], …}` (official `learned_embeds.bin`, diffusers) | torch zip or safetensors | the key(s) |
//! | `{"string_to_param": {"*": [n, d]}, "name": …}` (AUTOMATIC1111 `.pt`) | torch zip | `name` |
//! | `{"emb_params": [n, d]}` (AUTOMATIC1111 / ComfyUI) | safetensors | the file stem |
//! | `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (SDXL, A1111) | safetensors | the file stem |
//! | a bare tensor `[n, d]` | torch zip | none |

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::error::{IdentityError, Result};
use super::pickle::Value;
use super::{torch_zip, FORMAT};
use persona_diffusion::safetensors_file;

/// The file layouts [`import`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingFormat {
    /// `{token: vectors}` with one or more keys: diffusers, and the official textual-inversion scripts'
    /// `learned_embeds.bin` (several keys = several vectors, in key order).
    TokenMap,
    /// AUTOMATIC1111 `.pt`: `{"string_to_param": {"*": [n, d]}, "name": …, …}`.
    A1111Pt,
    /// AUTOMATIC1111 / ComfyUI safetensors: `{"emb_params": [n, d]}`.
    A1111Safetensors,
    /// AUTOMATIC1111 SDXL safetensors: `{"clip_l": [n, 768], "clip_g": [n, 1280]}`.
    A1111Sdxl,
    /// diffusers' SDXL pair: two `{token: [n, d]}` files, `text_encoder`'s and `text_encoder_2`'s
    /// ([`import_diffusers_pair`]).
    DiffusersSdxl,
    /// `torch.save(tensor)`: a bare `[n, d]` tensor, no token name.
    BareTensor,
}

impl fmt::Display for EmbeddingFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EmbeddingFormat::TokenMap => "diffusers / learned_embeds {token: vectors}",
            EmbeddingFormat::A1111Pt => "AUTOMATIC1111 .pt (string_to_param)",
            EmbeddingFormat::A1111Safetensors => "AUTOMATIC1111 safetensors (emb_params)",
            EmbeddingFormat::A1111Sdxl => "AUTOMATIC1111 SDXL safetensors (clip_l / clip_g)",
            EmbeddingFormat::DiffusersSdxl => {
                "diffusers SDXL pair ({token: vectors} per text encoder)"
            }
            EmbeddingFormat::BareTensor => "bare torch tensor",
        })
    }
}

/// An embedding read from another tool's file.
#[derive(Debug, Clone)]
pub struct ImportedEmbedding {
    /// The token name the file gives, if any.
    pub token: Option<String>,
    /// `[n, d]` f32 on the CPU, one row per pseudo-token. For SDXL, the CLIP-L rows (the first text encoder's).
    pub vectors: Tensor,
    /// For SDXL files: `sdxl.clip_g` (the second text encoder's rows), carried into the identity's modules.
    pub modules: BTreeMap<String, Tensor>,
    pub format: EmbeddingFormat,
}

/// Reads an embedding file of any layout in the module docs. Pickled files are parsed without executing
/// anything; a pickle that refers to anything but torch tensor types is refused with an error.
pub fn import(path: impl AsRef<Path>) -> Result<ImportedEmbedding> {
    let path = path.as_ref();
    let mut head = [0u8; 9];
    let head_len = read_head(path, &mut head)?;
    let head = &head[..head_len];
    if head.starts_with(b"PK\x03\x04") {
        from_torch_zip(path)
    } else if safetensors_file::looks_like_safetensors(head) {
        from_safetensors(path)
    } else if head.first() == Some(&0x80) {
        Err(IdentityError::file(path, "a plain pickle or a legacy (torch < 1.6) torch.save file: only torch zip archives and safetensors are read"))
    } else {
        Err(IdentityError::file(
            path,
            "neither a torch zip archive nor a safetensors file",
        ))
    }
}

/// Reads up to `head.len()` leading bytes (fewer for a shorter file).
fn read_head(path: &Path, head: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| IdentityError::io(path, e))?;
    let mut len = 0;
    let mut reader = file.take(head.len() as u64);
    loop {
        match reader.read(&mut head[len..]) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IdentityError::io(path, e)),
        }
    }
}

fn from_safetensors(path: &Path) -> Result<ImportedEmbedding> {
    let file = safetensors_file::read(path)?;
    if file.metadata.contains_key("format_version") && file.tensors.contains_key(super::EMBEDDINGS)
    {
        return Err(IdentityError::file(
            path,
            format!("this is already a {FORMAT} file: use it as it is"),
        ));
    }
    let stem = file_stem(path);
    let mut tensors = file.tensors;
    if let Some(vectors) = tensors.remove("emb_params") {
        return imported(
            path,
            stem,
            rows(vectors, "emb_params", path)?,
            EmbeddingFormat::A1111Safetensors,
        );
    }
    if let (Some(clip_l), Some(clip_g)) = (tensors.remove("clip_l"), tensors.remove("clip_g")) {
        return sdxl(
            path,
            stem,
            rows(clip_l, "clip_l", path)?,
            rows(clip_g, "clip_g", path)?,
        );
    }
    let mut entries: Vec<(String, Tensor)> = tensors.into_iter().collect();
    entries.sort_by(|(a, _), (b, _)| natural_key(a).cmp(&natural_key(b)));
    token_map(path, entries)
}

fn from_torch_zip(path: &Path) -> Result<ImportedEmbedding> {
    let (root, mut storages) = torch_zip::open(path)?;
    if let Value::Tensor(t) = &root {
        let vectors = rows(storages.tensor(t)?, "tensor", path)?;
        return Ok(ImportedEmbedding {
            token: None,
            vectors,
            modules: BTreeMap::new(),
            format: EmbeddingFormat::BareTensor,
        });
    }
    if let Some(params) = root.get("string_to_param") {
        let Some(Value::Tensor(t)) = params.get("*") else {
            return Err(IdentityError::file(
                path,
                format!(
                    "`string_to_param` is {}, expected {{\"*\": tensor}}",
                    params.describe()
                ),
            ));
        };
        let vectors = rows(storages.tensor(t)?, "string_to_param['*']", path)?;
        let token = root
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| file_stem(path));
        return imported(path, token, vectors, EmbeddingFormat::A1111Pt);
    }
    let Value::Dict(pairs) = &root else {
        return Err(IdentityError::file(
            path,
            format!("holds {}, not an embedding dict", root.describe()),
        ));
    };
    let mut entries = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        match (key, value) {
            (Value::Str(name), Value::Tensor(t)) => {
                entries.push((name.clone(), storages.tensor(t)?))
            }
            _ => {
                return Err(IdentityError::file(
                    path,
                    format!(
                        "holds {}: not a recognised embedding layout",
                        root.describe()
                    ),
                ))
            }
        }
    }
    token_map(path, entries)
}

/// `{token: [d] or [k, d]}`: the rows of every entry in order; the token is the shared stem of the keys.
fn token_map(path: &Path, entries: Vec<(String, Tensor)>) -> Result<ImportedEmbedding> {
    if entries.is_empty() {
        return Err(IdentityError::file(path, "holds no tensors"));
    }
    let mut parts = Vec::with_capacity(entries.len());
    for (name, tensor) in &entries {
        parts.push(rows(tensor.clone(), name, path)?);
    }
    let widths: Vec<usize> = parts.iter().map(|p| p.dims()[1]).collect();
    if widths.windows(2).any(|w| w[0] != w[1]) {
        return Err(IdentityError::file(
            path,
            format!("the tensors have different widths {widths:?}"),
        ));
    }
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    imported(
        path,
        Some(shared_stem(&names)),
        Tensor::cat(&parts, 0)?,
        EmbeddingFormat::TokenMap,
    )
}

fn sdxl(
    path: &Path,
    token: Option<String>,
    clip_l: Tensor,
    clip_g: Tensor,
) -> Result<ImportedEmbedding> {
    if clip_l.dims()[0] != clip_g.dims()[0] {
        return Err(IdentityError::file(
            path,
            format!(
                "clip_l has {} vectors but clip_g {}",
                clip_l.dims()[0],
                clip_g.dims()[0]
            ),
        ));
    }
    let modules = BTreeMap::from([(super::SDXL_CLIP_G.to_string(), clip_g)]);
    Ok(ImportedEmbedding {
        token,
        vectors: clip_l,
        modules,
        format: EmbeddingFormat::A1111Sdxl,
    })
}

/// diffusers' SDXL layout: two files of one `{token: [n, d]}` each, the first for `text_encoder`
/// (`load_textual_inversion(..., text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)`), the second for
/// `text_encoder_2` (as `persona export --format diffusers` writes them: `X.safetensors`, `X_2.safetensors`).
pub fn import_diffusers_pair(
    path: impl AsRef<Path>,
    path_2: impl AsRef<Path>,
) -> Result<ImportedEmbedding> {
    let (path, path_2) = (path.as_ref(), path_2.as_ref());
    let first = import(path)?;
    let second = import(path_2)?;
    for (p, e) in [(path, &first), (path_2, &second)] {
        if e.format != EmbeddingFormat::TokenMap || !e.modules.is_empty() {
            return Err(IdentityError::file(
                p,
                format!(
                    "read as {}; one text encoder's diffusers file ({{token: [n, d]}}) was expected",
                    e.format
                ),
            ));
        }
    }
    let mut imported = sdxl(path, first.token, first.vectors, second.vectors)?;
    imported.format = EmbeddingFormat::DiffusersSdxl;
    Ok(imported)
}

fn imported(
    path: &Path,
    token: Option<String>,
    vectors: Tensor,
    format: EmbeddingFormat,
) -> Result<ImportedEmbedding> {
    if vectors.dims()[0] == 0 {
        return Err(IdentityError::file(path, "holds no vectors"));
    }
    Ok(ImportedEmbedding {
        token,
        vectors,
        modules: BTreeMap::new(),
        format,
    })
}

/// A tensor as `[n, d]` f32 rows: `[d]` is one row; anything else of rank ≠ 2 is an error naming the tensor.
fn rows(tensor: Tensor, name: &str, path: &Path) -> Result<Tensor> {
    let tensor = match tensor.dims() {
        [d] if *d > 0 => tensor.unsqueeze(0)?,
        [_, d] if *d > 0 => tensor,
        dims => {
            return Err(IdentityError::file(
                path,
                format!("tensor `{name}` has shape {dims:?}, expected [d] or [n, d]"),
            ))
        }
    };
    Ok(tensor.to_dtype(DType::F32)?)
}

/// `<x>_v0, <x>_v1` → `<x>`; `tok, tok_1` → `tok`; a single key, or keys without a common stem → the first key
/// (diffusers' rule: a one-key file's key is the token).
fn shared_stem(names: &[&str]) -> String {
    let stems: Vec<&str> = names.iter().map(|n| strip_index(n)).collect();
    match stems.as_slice() {
        [first, rest @ ..] if !rest.is_empty() && rest.iter().all(|s| s == first) => {
            first.to_string()
        }
        _ => names[0].to_string(),
    }
}

/// `name_v3` or `name_3` → `name`; other names unchanged.
fn strip_index(name: &str) -> &str {
    let without_digits = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if without_digits.len() == name.len() {
        return name;
    }
    without_digits
        .strip_suffix("_v")
        .or_else(|| without_digits.strip_suffix('_'))
        .unwrap_or(name)
}

/// Orders `tok`, `tok_1`, `tok_2`, …, `tok_10` as a person would (safetensors keeps no key order).
fn natural_key(name: &str) -> (&str, u64) {
    let stem = strip_index(name);
    let index = name[stem.len()..]
        .trim_start_matches(['_', 'v'])
        .parse()
        .unwrap_or(0);
    (stem, index)
}

fn file_stem(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}
