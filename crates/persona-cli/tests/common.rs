//! Helpers shared by the command-line tests.

use std::process::{Command, Output};

use persona_diffusion::testing::fixtures_dir;

/// Runs the `persona` binary built for these tests.
pub fn persona(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_persona"))
        .args(args)
        .output()
        .unwrap()
}

/// The tiny SD 2.x-style pipeline of the fixtures.
pub fn tiny() -> String {
    fixtures_dir()
        .join("sd2-tiny")
        .to_string_lossy()
        .into_owned()
}
