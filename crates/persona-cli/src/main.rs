//! `persona`: learn a person's identity from a few photos and draw them with Stable Diffusion.
//!
//! A thin binary: each sub-command parses its flags and calls the library crates.

mod attention;
mod bench;
mod compare;
mod demo;
mod device_flags;
mod eval;
mod faces;
mod generate;
mod identity_cmd;
mod output;
mod progress;
mod sampling_flags;
mod train;
mod values;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "persona", version, about = "Identity personalization of Stable Diffusion: train, generate, evaluate", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Learn a person of the trained world (world/) and draw them in new scenes: the whole job in minutes on a CPU.
    Demo(demo::DemoArgs),
    /// Generate images from a prompt with a Stable Diffusion model (diffusers folder or cached hub id).
    Generate(generate::GenerateArgs),
    /// Learn an identity (pseudo-tokens) from photos of a person.
    Train(train::TrainArgs),
    /// Detect, align, embed and compare faces.
    Faces(faces::FacesArgs),
    /// Write an identity in another tool's format (diffusers load_textual_inversion, AUTOMATIC1111 / ComfyUI).
    Export(identity_cmd::ExportArgs),
    /// Turn an embedding file from another tool (or the official learned_embeds.bin) into an identity file.
    Import(identity_cmd::ImportArgs),
    /// Score identity similarity, face detection and prompt fidelity (the Celeb Basis protocol); writes a report.
    Eval(eval::EvalArgs),
    /// Train, generate and evaluate methods × identities × prompt sets from a TOML manifest (shardable).
    Compare(compare::CompareArgs),
    /// Heat maps of a token's cross-attention over a generated image, per layer resolution.
    Attention(attention::AttentionArgs),
    /// Measure speed and memory on random weights of the real architectures; write random-weight pipelines;
    /// check that two devices compute the same images and gradients.
    Bench(bench::BenchArgs),
}

/// A panic is a bug in persona; it still ends as one `error:` line with status 2 (not Rust's 101), saying
/// so and where (with a backtrace when `RUST_BACKTRACE` is set).
fn report_panics_as_errors() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error, a bug in persona (please report it): {message}{place}");
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        std::process::exit(2);
    }));
}

/// The command line, or exit: help and version as clap prints them, a usage error as one line (status 2),
/// like every other error of persona.
fn parse_args() -> Cli {
    Cli::try_parse().unwrap_or_else(|e| {
        if matches!(
            e.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            e.exit()
        }
        eprintln!("{}", one_line(&e.render().to_string()));
        std::process::exit(2)
    })
}

/// clap's rendered error as one line: its message (the lines before the first blank one, joined), any `tip:`
/// it gives, and where to learn more; the usage block is left to `--help`.
fn one_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let tips: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
        .collect();
    let mut line = message.join(" ");
    if !tips.is_empty() {
        line += &format!(" ({})", tips.join("; "));
    }
    line + " (see --help)"
}

fn main() {
    persona_diffusion::allocator::keep_freed_memory();
    persona_diffusion::threads::decide_once();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERSONA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    report_panics_as_errors();
    let cli = parse_args();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(a),
        Command::Faces(a) => faces::run(a),
        Command::Export(a) => identity_cmd::run_export(a),
        Command::Import(a) => identity_cmd::run_import(a),
        Command::Eval(a) => eval::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Attention(a) => attention::run(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        // `persona faces`: an input without a face is status 1 (docs/faces.md), other failures 2.
        if e.downcast_ref::<faces::NoFaceFound>().is_some() {
            std::process::exit(faces::EXIT_NO_FACE);
        }
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_are_one_line_keeping_the_flag_and_the_tip() {
        for args in [
            &["persona", "generate", "--steps", "0"][..],
            &["persona", "generate", "--model", "m", "--out", "o"],
            &[
                "persona", "generate", "--model", "m", "--prompt", "p", "--out", "o", "--step", "3",
            ],
        ] {
            let Err(e) = Cli::try_parse_from(args) else {
                panic!("{args:?} parsed")
            };
            let line = one_line(&e.render().to_string());
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with("error: "), "{line}");
            assert!(line.ends_with("(see --help)"), "{line}");
            let named = ["--steps", "--prompt"].iter().any(|f| line.contains(f));
            assert!(named, "{args:?}: {line}");
        }
    }
}
