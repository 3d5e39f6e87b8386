//! `persona export` and `persona import`: identity files to and from the embedding files other tools use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use persona_diffusion::loading::resolve_model;
use persona_identity::{
    diffusers_second_path, export_a1111, export_diffusers, import, import_diffusers_pair,
    BaseModel, Identity,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    /// diffusers `pipe.load_textual_inversion(OUT)`: one [n, d] tensor named after the token (SDXL: OUT for
    /// text_encoder and OUT_2 for text_encoder_2, one load_textual_inversion call each).
    Diffusers,
    /// AUTOMATIC1111 / ComfyUI embeddings folder: `emb_params` [n, d] (SDXL: `clip_l` + `clip_g`).
    A1111,
}

/// Writes an identity file in a format other Stable Diffusion tools load. Both formats are safetensors and
/// hold only the pseudo-token vectors: method modules (an ID-EA adapter, SeFi stages) cannot be expressed in
/// them and are left out with a warning.
///
/// diffusers registers the rows as TOKEN, TOKEN_1, …, TOKEN_{n-1} and expands TOKEN in a prompt to all of them,
/// so prompt with the identity's name (e.g. "a photo of <alice>"). AUTOMATIC1111 and ComfyUI use the file name
/// as the prompt word: save it as alice.safetensors in their embeddings folder and write "a photo of alice"
/// (ComfyUI: "embedding:alice").
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
persona export --format diffusers alice.safetensors alice-diffusers.safetensors\n    \
then in Python: pipe.load_textual_inversion(\"alice-diffusers.safetensors\"); pipe(\"a photo of <alice>\")\n  \
persona export --format a1111 alice.safetensors ~/stable-diffusion-webui/embeddings/alice.safetensors")]
pub struct ExportArgs {
    /// Target tool.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// The identity file (from `persona train` or `persona import`).
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// The file to write; must end in .safetensors.
    #[arg(value_name = "OUT")]
    output: PathBuf,
    /// Replace OUT if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    if same_file(&a.input, &a.output) {
        bail!(
            "OUT {} is IN: exporting would replace the identity file with a file it cannot be read back from; choose another OUT (nothing was written)",
            a.output.display()
        );
    }
    refuse_existing(&a.output, a.overwrite)?;
    let identity = Identity::load(&a.input)?;
    let written = match a.format {
        ExportFormat::Diffusers => {
            if identity.is_sdxl() {
                refuse_existing(&diffusers_second_path(&a.output), a.overwrite)?;
            }
            export_diffusers(&identity, &a.output)?
        }
        ExportFormat::A1111 => {
            export_a1111(&identity, &a.output)?;
            vec![a.output.clone()]
        }
    };
    let format = a
        .format
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    let width = match identity.rows_2() {
        Some(g) => format!("({} + {}, SDXL)", identity.width(), g.dim(1)?),
        None => identity.width().to_string(),
    };
    println!(
        "wrote {} for {format}: identity {} — {} vectors × {width}, method {}",
        files.join(" and "),
        identity.token,
        identity.num_tokens(),
        identity.meta.method
    );
    if identity.is_sdxl() && matches!(a.format, ExportFormat::Diffusers) {
        println!(
            "diffusers: pipe.load_textual_inversion(\"{}\", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer) \
             and pipe.load_textual_inversion(\"{}\", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)",
            files[0],
            files.get(1).map_or("", String::as_str)
        );
    }
    Ok(())
}

/// Turns an embedding made by another tool into an identity file that `persona generate --identity` uses.
/// Reads, recognising the layout by content:
///   - the official textual-inversion / Cross Init `learned_embeds.bin` ({token: [d], …}: one vector per key),
///   - diffusers .bin / .safetensors ({token: [n, d]}),
///   - AUTOMATIC1111 .pt (string_to_param) and AUTOMATIC1111 / ComfyUI .safetensors (emb_params; SDXL clip_l +
///     clip_g).
///
/// .bin and .pt files are Python pickles, which Python executes when loading them. They are read here by a
/// parser that never executes anything and refuses any file that refers to something other than torch
/// tensors, so importing an untrusted file is safe.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
persona import learned_embeds.bin alice.safetensors --token '<alice>' --model stabilityai/stable-diffusion-2-1-base\n  \
persona import ~/Downloads/some-face.pt face.safetensors\n\
Then: persona generate --model … --identity alice.safetensors --prompt 'a photo of {}' --out out/")]
pub struct ImportArgs {
    /// The embedding file to read.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// The identity file to write (safetensors).
    #[arg(value_name = "OUT")]
    output: PathBuf,
    /// Name of the identity in prompts; its pseudo-tokens become NAME_v0, NAME_v1, … (default: the name the
    /// file gives: its key, its `name` field, or for A1111 safetensors its file name).
    #[arg(long, value_name = "NAME")]
    token: Option<String>,
    /// The model the embedding was trained for (diffusers folder or cached hub id). Its text encoder is
    /// recorded so that using the identity with another model is refused. Without it the base model is
    /// "unknown" and only the embedding width is checked at use.
    #[arg(long, value_name = "DIR")]
    model: Option<String>,
    /// SDXL in diffusers' layout: IN is `text_encoder`'s file and this `text_encoder_2`'s (each
    /// `{token: [n, d]}`, as `persona export --format diffusers` writes X.safetensors and X_2.safetensors).
    #[arg(long, value_name = "FILE")]
    text_encoder_2: Option<PathBuf>,
    /// Replace OUT if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    if same_file(&a.input, &a.output) {
        bail!(
            "OUT {} is IN; choose another OUT (nothing was written)",
            a.output.display()
        );
    }
    refuse_existing(&a.output, a.overwrite)?;
    let imported = match &a.text_encoder_2 {
        Some(second) => import_diffusers_pair(&a.input, second)?,
        None => import(&a.input)?,
    };
    let format = imported.format;
    let base = a.model.as_deref().map(base_model).transpose()?;
    let identity = Identity::from_imported(imported, a.token.as_deref(), base)?;
    if let Some(model) = a.model.as_deref() {
        let dir = resolve_model(model)?;
        let second = dir.join("text_encoder_2/config.json");
        let width_2 = if second.is_file() {
            let config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&second).with_context(|| second.display().to_string())?,
            )
            .with_context(|| second.display().to_string())?;
            config["hidden_size"].as_u64().map(|w| w as usize)
        } else {
            None
        };
        identity
            .check_family(second.is_file(), width_2)
            .with_context(|| format!("--model {model}"))?;
    }
    identity.save(&a.output)?;
    let base = &identity.meta.base_model;
    let base = if base.is_unknown() {
        format!("unknown (width {} checked at use)", base.width())
    } else {
        base.name.clone()
    };
    println!(
        "wrote {}: identity {} ({}) — {} vectors × {}, read as {format}; base model {base}",
        a.output.display(),
        identity.token,
        identity.tokens.join(" "),
        identity.num_tokens(),
        identity.width()
    );
    Ok(())
}

/// The base model behind `--model`, named as the user wrote it (a hub id reads better than a snapshot path).
fn base_model(model: &str) -> Result<BaseModel> {
    let dir = resolve_model(model)?;
    let mut base = BaseModel::from_model_dir(&dir).with_context(|| format!("--model {model}"))?;
    base.name = model.to_string();
    Ok(base)
}

/// Whether two paths name the same existing file (also through links or `./`).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn refuse_existing(output: &Path, overwrite: bool) -> Result<()> {
    if output.exists() && !overwrite {
        bail!(
            "{} exists; choose another OUT or pass --overwrite (nothing was written)",
            output.display()
        );
    }
    Ok(())
}
