//! GFLOP/s of the `gemm` crate and, given a path, of that library's `cblas_sgemm`, on the training step's
//! shapes: `cargo run --release -- /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0`
//! (`THREADS`, default 2; set the library's own thread count to match).
use std::time::Instant;

/// CBLAS's enum values: row-major storage, operands not transposed.
const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;

type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("linear 64² qkv", 4096, 320, 320),
    ("ff in 64²", 4096, 2560, 320),
    ("ff out 64²", 4096, 320, 1280),
    ("conv tap 64²", 320, 4224, 320),
    ("conv tap 32²", 640, 1088, 640),
    ("conv tap 16²", 1280, 288, 1280),
    ("attn qk 64²", 4096, 4096, 64),
    ("attn pv 64²", 4096, 64, 4096),
    ("conv im2col 64²", 320, 4096, 2880),
    ("square 2048³ (peak)", 2048, 2048, 2048),
];
fn time(mut f: impl FnMut(), flops: f64) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs_f64() < 0.3 {
            f();
            n += 1;
        }
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    flops / best / 1e9
}
fn main() {
    let lib = std::env::args().nth(1);
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let l = lib
        .as_ref()
        .map(|p| unsafe { libloading::Library::new(p).unwrap() });
    let sgemm: Option<libloading::Symbol<Sgemm>> = l
        .as_ref()
        .map(|l| unsafe { l.get(b"cblas_sgemm").unwrap() });
    for &(name, m, n, k) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let g = time(
            || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            },
            flops,
        );
        let s = sgemm.as_ref().map(|f| {
            time(
                || unsafe {
                    f(
                        CBLAS_ROW_MAJOR,
                        CBLAS_NO_TRANS,
                        CBLAS_NO_TRANS,
                        m as i32,
                        n as i32,
                        k as i32,
                        1.0,
                        a.as_ptr(),
                        k as i32,
                        b.as_ptr(),
                        n as i32,
                        0.0,
                        c.as_mut_ptr(),
                        n as i32,
                    )
                },
                flops,
            )
        });
        println!(
            "{name:18} {m:5}x{n:5}x{k:5}  gemm {g:6.1}  blas {}",
            s.map(|s| format!("{s:6.1}  ratio {:.2}", s / g))
                .unwrap_or_default()
        );
    }
}
