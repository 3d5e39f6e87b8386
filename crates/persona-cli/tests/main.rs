//! All integration tests of this crate in one binary: one link of candle/tract instead of one per file,
//! which keeps a cold CI build's disk use and link time small.

mod common;
mod device_cli;
mod faces_cli;
mod faults_cli;
mod generate_cli;
mod idea_cli;
mod photos_cli;
mod reliability_cli;
mod sefi_cli;
mod world_cli;
