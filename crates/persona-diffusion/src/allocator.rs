//! Keeps freed memory for reuse instead of handing it back to the kernel.
//!
//! candle allocates a fresh buffer for every intermediate tensor. glibc serves blocks above its mmap threshold
//! (at most 32 MiB) with a new `mmap` each time and unmaps them on free, so every large activation, im2col
//! buffer and attention block of every UNet call is page-faulted in and zeroed by the kernel again: a perf
//! profile of a training step showed ~20 % of the time in page faults and page clearing. With chunk `mmap`
//! disabled and trimming off, freed blocks stay in the heap and the next step reuses them (a training step
//! then takes no page faults after the first; the process keeps its peak heap until it exits). Measured
//! on SD 2.1-base at 512²: UNet forward 9.8 → 7.3 s, training step 28 → 21 s, same peak memory
//! (docs/performance.md).

/// Applies the allocator settings (glibc on Linux; elsewhere nothing). Call once at start-up, before threads
/// allocate.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>: M_TRIM_THRESHOLD = -1 (a value of -1 disables trimming), M_MMAP_MAX = -4.
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called before other threads exist and takes
        // plain integers.
        let ok = unsafe { mallopt(-4, 0) == 1 && mallopt(-1, -1) == 1 };
        if !ok {
            tracing::debug!(
                "mallopt refused the allocator settings; large buffers stay mmap-backed"
            );
        }
    }
}
