//! All integration tests of this crate in one binary: one link of candle/tract instead of one per file,
//! which keeps a cold CI build's disk use and link time small.

mod idea_grad;
mod idea_parity;
mod idea_train;
mod mixed_precision;
mod sdxl_methods;
mod sdxl_train;
mod sefi_step;
mod sefi_train;
mod train_loop;
mod train_step;
