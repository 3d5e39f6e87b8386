//! Output buffers filled by both cores.
//!
//! `vec![0.0; n]` zeroes on the calling thread alone: with freed memory kept for reuse
//! ([`crate::allocator`]) every large output is a `memset` while the other core waits, and a profile of a
//! training step found the main thread working alone (zeroing, copying) for ~9 % of the step. These helpers
//! split that work over the thread pool.

use rayon::prelude::*;

/// Below this many floats one thread is quicker than handing out tasks.
const PARALLEL_FROM: usize = 1 << 16;

/// Floats per task.
const CHUNK: usize = 1 << 15;

/// `vec![0f32; n]`, zeroed by the thread pool.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    if n < PARALLEL_FROM {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the `n` elements of the spare capacity were all written just above.
    unsafe { v.set_len(n) };
    v
}

/// `src.to_vec()`, copied by the thread pool.
pub(crate) fn copied(src: &[f32]) -> Vec<f32> {
    if src.len() < PARALLEL_FROM {
        return src.to_vec();
    }
    let mut v = Vec::with_capacity(src.len());
    v.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                d.write(s);
            }
        });
    // SAFETY: every element of the spare capacity got its source element just above.
    unsafe { v.set_len(src.len()) };
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_and_copied_match_the_serial_ones() {
        for n in [
            0,
            5,
            super::PARALLEL_FROM - 1,
            super::PARALLEL_FROM,
            3 * super::CHUNK + 7,
        ] {
            assert_eq!(super::zeroed(n), vec![0f32; n]);
            let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            assert_eq!(super::copied(&src), src);
        }
    }
}
