//! `persona`: learn a person's identity from a few photos and draw them with Stable Diffusion.
//!
//! A thin binary: each sub-command parses its flags and calls the library crates.

mod bench;
mod faces;
mod generate;
mod progress;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "persona", version, about = "Identity personalization of Stable Diffusion: train, generate, evaluate", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt with a Stable Diffusion model (diffusers folder or cached hub id).
    Generate(generate::GenerateArgs),
    /// Learn an identity (pseudo-tokens) from photos of a person.
    Train(train::TrainArgs),
    /// Detect, align, embed and compare faces.
    Faces(faces::FacesArgs),
    /// Measure the speed of model parts (random weights, real architectures).
    Bench(bench::BenchArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PERSONA_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(a),
        Command::Faces(a) => faces::run(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
