//! Speed of detection + alignment + embedding per 512² image (MTCNN + FaceNet), the Rust half
//! of the comparison with onnxruntime (`tools/faces/bench_ort.py`, same images, same work).
//!
//! `cargo run --release -p persona-faces --example bench_faces [-- RUNS [MODELS_DIR]]`
//!
//! tract runs single-threaded (its default executor); the onnxruntime script is run with
//! `--threads 1` and `--threads 2` for comparison. Timing lives here, not in the tests.

use std::path::PathBuf;
use std::time::Instant;

use persona_faces::{largest, load_rgb, Detector, Mtcnn, OnnxRecognizer, Recognizer};

/// (file, left, top): 512x512 crops of the fixture photos, as in bench_ort.py.
const IMAGES: [(&str, u32, u32); 3] = [
    ("astronaut.jpg", 0, 0),
    ("grace_hopper.jpg", 0, 0),
    ("t1.jpg", 0, 200),
];

/// CPU time of this thread in ms (Linux `/proc/thread-self/schedstat`, ns precision). tract runs
/// on the calling thread, so this is the compute spent, whatever else loads the machine.
fn thread_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e6)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let models = args
        .next()
        .map(PathBuf::from)
        .unwrap_or(root.join("../shared/models"));

    let t = Instant::now();
    let mtcnn = Mtcnn::load_dir(models.join("mtcnn"))?;
    let facenet = OnnxRecognizer::load(
        models.join("facenet/facenet_inception_resnet_v1_160.onnx"),
        None,
    )?;
    println!(
        "load + optimise models: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let mut means = (0.0, 0.0, 0.0, 0.0);
    for (name, left, top) in IMAGES {
        let full = load_rgb(root.join("fixtures/faces/photos").join(name))?;
        let img = image::imageops::crop_imm(&full, left, top, 512, 512).to_image();
        anyhow::ensure!(
            img.dimensions() == (512, 512),
            "{name}: crop is {:?}",
            img.dimensions()
        );
        // First run builds P-Net plans for this image size (cached afterwards).
        let t = Instant::now();
        let face = largest(&mtcnn.detect(&img)?).expect("a face");
        facenet.embed(&img, &face)?;
        let first = t.elapsed().as_secs_f64() * 1e3;
        let (mut det, mut emb, mut total) = (Vec::new(), Vec::new(), Vec::new());
        let cpu0 = thread_cpu_ms();
        for _ in 0..runs {
            let t0 = Instant::now();
            let face = largest(&mtcnn.detect(&img)?).expect("a face");
            let t1 = Instant::now();
            let e = facenet.embed(&img, &face)?; // aligned crop + FaceNet
            let t2 = Instant::now();
            assert_eq!(e.len(), 512);
            det.push((t1 - t0).as_secs_f64() * 1e3);
            emb.push((t2 - t1).as_secs_f64() * 1e3);
            total.push((t2 - t0).as_secs_f64() * 1e3);
        }
        let cpu = (thread_cpu_ms() - cpu0) / runs as f64;
        let (d, e, tt) = (median(det), median(emb), median(total));
        println!("{name}: {tt:.1} ms (detect {d:.1} + align/embed {e:.1}; CPU {cpu:.1} ms; first run {first:.0} ms; median of {runs})");
        means.0 += d / 3.0;
        means.1 += e / 3.0;
        means.2 += tt / 3.0;
        means.3 += cpu / 3.0;
    }
    println!(
        "mean over images: {:.1} ms (detect {:.1}, align+embed {:.1}); CPU time {:.1} ms/image",
        means.2, means.0, means.1, means.3
    );
    Ok(())
}
