//! Identity-file metadata: what an identity was trained with and on which base model.
//!
//! Every field is stored under its own key in the safetensors `__metadata__` header, the value JSON-encoded
//! (so `"ti"` is stored with its quotes, `1` without). One key per field keeps the header readable with any
//! safetensors viewer and lets a future version add keys without breaking older readers.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::{IdentityError, Result};

/// The value of the `format` header key; any other value means "not an identity file".
pub const FORMAT: &str = "persona-identity";
/// The layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The base model an identity belongs to: its embeddings only make sense in that text encoder's input space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    /// A human name (the model folder's name, or `org/name` for a hub-cache snapshot); informative only.
    pub name: String,
    /// Hex SHA-256 of the canonical text-encoder config plus the embedding-table shape (see [`text_encoder_hash`]),
    /// or `"unknown"` for an imported embedding whose base model was not given.
    pub text_encoder_hash: String,
    /// The text encoder's token-embedding table, `[vocab_size, hidden_size]` (`[0, d]` when unknown).
    pub embedding_shape: [usize; 2],
}

/// Keys of a transformers `config.json` that record how and where it was saved rather than what the model is:
/// the same text encoder re-saved by another transformers version or in fp16 must keep its hash.
const BOOKKEEPING_KEYS: [&str; 5] = [
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_commit_hash",
];

const UNKNOWN: &str = "unknown";

impl BaseModel {
    /// The base of an embedding imported without a model: only its width `d` is known, checked at use.
    pub fn unknown(width: usize) -> Self {
        BaseModel {
            name: UNKNOWN.into(),
            text_encoder_hash: UNKNOWN.into(),
            embedding_shape: [0, width],
        }
    }

    pub fn is_unknown(&self) -> bool {
        self.text_encoder_hash == UNKNOWN
    }

    /// The text encoder's hidden size: the width every pseudo-token vector must have.
    pub fn width(&self) -> usize {
        self.embedding_shape[1]
    }

    /// Reads `<dir>/text_encoder/config.json` of a diffusers model folder. Only the config is read (not the
    /// weights), so this stays cheap and independent of how the rest of the program loads models.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("text_encoder").join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| IdentityError::io(&path, e))?;
        Self::from_text_encoder_config(model_name(dir), &bytes, &path)
    }

    /// Builds the description from the bytes of a CLIP text-encoder `config.json` (`path` only names it in errors).
    pub fn from_text_encoder_config(
        name: impl Into<String>,
        config: &[u8],
        path: &Path,
    ) -> Result<Self> {
        let config: Value = serde_json::from_slice(config).map_err(|e| {
            IdentityError::file(path, format!("text-encoder config is not JSON: {e}"))
        })?;
        let field = |key: &str| {
            config
                .get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    IdentityError::file(path, format!("text-encoder config has no integer `{key}`"))
                })
        };
        let shape = [field("vocab_size")?, field("hidden_size")?];
        Ok(BaseModel {
            name: name.into(),
            text_encoder_hash: text_encoder_hash(&config, shape),
            embedding_shape: shape,
        })
    }

    /// `name (text encoder hash 0123456789ab…, embeddings [49408, 1024])`, for error messages.
    pub(crate) fn describe(&self) -> String {
        let [vocab, width] = self.embedding_shape;
        if self.is_unknown() {
            return format!("{} (embedding width {width})", self.name);
        }
        format!(
            "{} (text encoder hash {:.12}…, embeddings [{vocab}, {width}])",
            self.name, self.text_encoder_hash
        )
    }
}

/// Hex SHA-256 of the config re-serialised canonically (sorted keys, no whitespace, bookkeeping keys dropped)
/// followed by `\n[vocab,hidden]`: insensitive to formatting, sensitive to anything that changes the model.
pub fn text_encoder_hash(config: &Value, embedding_shape: [usize; 2]) -> String {
    let mut config = canonical(config);
    if let Value::Object(map) = &mut config {
        for key in BOOKKEEPING_KEYS {
            map.remove(key);
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(config.to_string().as_bytes());
    hasher.update(format!("\n[{},{}]", embedding_shape[0], embedding_shape[1]).as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Rebuilds every object with its keys inserted in sorted order, so the serialised text is sorted whether or not
/// serde_json's `preserve_order` feature is on somewhere in the build.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The folder's name, or `org/name` for a hub-cache snapshot (`models--org--name/snapshots/<commit>`), whose own
/// name is a meaningless commit hash.
fn model_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let snapshot_repo = dir
        .parent()
        .filter(|p| file_name(p).as_deref() == Some("snapshots"))
        .and_then(Path::parent)
        .and_then(file_name)
        .and_then(|repo| {
            repo.strip_prefix("models--")
                .map(|r| r.replacen("--", "/", 1))
        });
    snapshot_repo
        .or_else(|| file_name(&dir))
        .unwrap_or_else(|| dir.display().to_string())
}

/// What an identity was trained with; stored in the identity file's header (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// `ti`, `cross-init`, `idea`, `sefi`, or `imported` for an embedding brought in from another tool.
    pub method: String,
    pub base_model: BaseModel,
    /// Training hyper-parameters (free-form JSON: steps, lr, seed…); for an import, where it came from.
    pub hyper: Value,
    /// The face-recognition model whose embedding the method used (ID-EA), if any.
    pub face_model: Option<String>,
    /// When the file was made, RFC 3339 UTC.
    pub created: String,
}

impl IdentityMeta {
    /// Metadata for a new identity, stamped with the current time.
    pub fn new(method: impl Into<String>, base_model: BaseModel, hyper: Value) -> Self {
        IdentityMeta {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            method: method.into(),
            base_model,
            hyper,
            face_model: None,
            created: rfc3339_utc(now_unix_seconds()),
        }
    }
}

/// Header keys that belong to the [`super::Identity`] itself rather than to its [`IdentityMeta`].
const TOKEN_KEY: &str = "token";
const TOKENS_KEY: &str = "tokens";

/// The safetensors header of an identity: one JSON-encoded value per metadata field, plus the token names.
pub(crate) fn to_header(
    meta: &IdentityMeta,
    token: &str,
    tokens: &[String],
) -> Result<HashMap<String, String>> {
    let Value::Object(fields) =
        serde_json::to_value(meta).map_err(|e| IdentityError::Invalid(e.to_string()))?
    else {
        return Err(IdentityError::Invalid(
            "identity metadata did not serialise to a JSON object".into(),
        ));
    };
    let mut header: HashMap<String, String> = fields
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    header.insert(TOKEN_KEY.into(), Value::from(token).to_string());
    header.insert(TOKENS_KEY.into(), Value::from(tokens.to_vec()).to_string());
    Ok(header)
}

/// Parses an identity header back: checks `format` and `format_version` first so that a file of another kind or
/// a newer version gets that message rather than a confusing missing-field one.
pub(crate) fn from_header(
    header: &HashMap<String, String>,
    path: &Path,
) -> Result<(IdentityMeta, String, Vec<String>)> {
    // Every identity header value is JSON and `format` is the JSON string "persona-identity"; a model's weights
    // file has `format: pt` (not JSON) or no header at all.
    if header.get("format").map(String::as_str) != Some(&format!("{FORMAT:?}")) {
        let mut fields = Map::new();
        if let Some(Ok(v)) = header
            .get("format")
            .map(|f| serde_json::from_str::<Value>(f))
        {
            fields.insert("format".into(), v);
        }
        check_format(&fields, path)?;
    }
    let mut fields = Map::new();
    for (key, raw) in header {
        let value: Value = serde_json::from_str(raw).map_err(|e| {
            IdentityError::file(
                path,
                format!("bad metadata: key `{key}` is not JSON ({e}): {raw:?}"),
            )
        })?;
        fields.insert(key.clone(), value);
    }
    check_format(&fields, path)?;
    let token = take_field(&mut fields, TOKEN_KEY, path)?;
    let tokens = take_field(&mut fields, TOKENS_KEY, path)?;
    let meta = serde_json::from_value(Value::Object(fields))
        .map_err(|e| IdentityError::file(path, format!("bad metadata: {e}")))?;
    Ok((meta, token, tokens))
}

fn check_format(fields: &Map<String, Value>, path: &Path) -> Result<()> {
    match fields.get("format").and_then(Value::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(IdentityError::file(
                path,
                format!("header format is {other:?}, not a {FORMAT} file"),
            ));
        }
        None => {
            return Err(IdentityError::file(
                path,
                format!("not a persona identity file: its header has no `format: {FORMAT}` (an embedding from another tool? convert it with `persona import`)"),
            ));
        }
    }
    match fields.get("format_version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => Ok(()),
        Some(v) => Err(IdentityError::file(
            path,
            format!("identity format version {v} is not supported: this build reads version {FORMAT_VERSION}"),
        )),
        None => Err(IdentityError::file(path, "bad metadata: `format_version` is missing or not an integer")),
    }
}

fn take_field<T: serde::de::DeserializeOwned>(
    fields: &mut Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<T> {
    let value = fields
        .remove(key)
        .ok_or_else(|| IdentityError::file(path, format!("bad metadata: no `{key}` key")))?;
    serde_json::from_value(value)
        .map_err(|e| IdentityError::file(path, format!("bad metadata: `{key}`: {e}")))
}

fn now_unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time, by the days-to-civil conversion of the proleptic Gregorian calendar
/// (avoids a date-time dependency for one timestamp).
fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn hash_ignores_whitespace_order_and_bookkeeping() {
        let a: Value = serde_json::from_str(
            r#"{"hidden_size": 32, "vocab_size": 10, "transformers_version": "4"}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str("{\"vocab_size\":10,\n  \"hidden_size\":32}").unwrap();
        assert_eq!(
            text_encoder_hash(&a, [10, 32]),
            text_encoder_hash(&b, [10, 32])
        );
        assert_ne!(
            text_encoder_hash(&a, [10, 32]),
            text_encoder_hash(&a, [11, 32])
        );
    }
}
