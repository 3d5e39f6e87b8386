//! The CPU thread count, decided once.
//!
//! candle asks for its thread count on every matrix product (`candle_core::utils::get_num_threads`), and
//! without `RAYON_NUM_THREADS` set that means reading the CPU masks and `/proc/cpuinfo` each time: ~1 000
//! times a training step, 0.4 % of it in a profile (the kernel formatting `/proc/cpuinfo`). Setting the
//! variable once, to the count candle would have chosen, keeps every product's answer the same and cheap.

/// Sets `RAYON_NUM_THREADS` to candle's default when the user has not set it. Call once at start-up, before
/// other threads exist (changing the environment is not safe while another thread reads it).
pub fn decide_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
