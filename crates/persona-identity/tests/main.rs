//! All integration tests of this crate in one binary (one link of candle instead of one per file).

mod identity;
mod identity_io;
