//! Identity files.
