//! The CUDA device's default memory pool, from which candle allocates (cudarc's stream-ordered
//! `cuMemAllocAsync`). Two settings matter:
//! - its release threshold: by default (0) the pool hands every freed byte back to the driver at each
//!   synchronisation, and the next step maps it again; PyTorch's caching allocator keeps it. We keep it too.
//! - its high-water mark of memory in use: the peak GPU memory a benchmark reports (as PyTorch's
//!   `max_memory_allocated`).

use cudarc::driver::sys::{self, CUmemPool_attribute, CUresult};

use crate::{Error, Result};

fn check(what: &str, r: CUresult) -> Result<()> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Msg(format!("CUDA {what}: {r:?}")))
    }
}

fn default_pool(ordinal: usize) -> Result<sys::CUmemoryPool> {
    let mut dev: sys::CUdevice = 0;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: plain driver queries writing into the locals; the context was created by candle's device.
    unsafe {
        check("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal as i32))?;
        check(
            "cuDeviceGetDefaultMemPool",
            sys::cuDeviceGetDefaultMemPool(&mut pool, dev),
        )?;
    }
    Ok(pool)
}

fn set(ordinal: usize, attr: CUmemPool_attribute, mut value: u64) -> Result<()> {
    let pool = default_pool(ordinal)?;
    // SAFETY: both attributes set here take a `cuuint64_t`.
    check("cuMemPoolSetAttribute", unsafe {
        sys::cuMemPoolSetAttribute(pool, attr, (&mut value as *mut u64).cast())
    })
}

/// Keeps freed memory in the pool for reuse instead of returning it to the driver at every sync.
pub fn keep_freed_memory(ordinal: usize) -> Result<()> {
    set(
        ordinal,
        CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        u64::MAX,
    )
}

/// Starts a new peak measurement.
pub fn reset_peak(ordinal: usize) -> Result<()> {
    set(
        ordinal,
        CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        0,
    )
}

/// Bytes in use at the high-water mark since the last reset.
pub fn peak_bytes(ordinal: usize) -> Result<u64> {
    let pool = default_pool(ordinal)?;
    let mut value = 0u64;
    // SAFETY: USED_MEM_HIGH is a `cuuint64_t`.
    check("cuMemPoolGetAttribute", unsafe {
        sys::cuMemPoolGetAttribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut value as *mut u64).cast(),
        )
    })?;
    Ok(value)
}
