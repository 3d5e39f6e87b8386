//! `persona faces …`: detect, align, embed and compare faces from the command line.
//!
//! Exit status: when an input image has no face, the command still handles the other inputs
//! (except `embed`, which writes all or nothing), prints a message and `run` returns an error
//! wrapping [`NoFaceFound`]. Returned to `main`, that error exits with status 1
//! ([`EXIT_NO_FACE`]; every other failure exits 2); callers can tell it from other failures with
//! `err.downcast_ref::<NoFaceFound>()`. All files are written atomically (temporary file in the
//! destination folder, then rename), so an interrupted run never leaves a half-written output.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use persona_diffusion::pipeline::image::write_atomic;
use persona_faces::{
    cosine, largest, load_rgb, Detector, Face, ModelSearch, Recognizer, RecognizerKind,
};

/// Exit status for "an input image has no face" (`main` maps [`NoFaceFound`] to it; other failures exit 2).
pub const EXIT_NO_FACE: i32 = 1;

/// The error `run` returns when some inputs contain no face.
#[derive(Debug)]
pub struct NoFaceFound {
    pub images: Vec<PathBuf>,
}

impl std::fmt::Display for NoFaceFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        write!(f, "no face found in {}", names.join(", "))
    }
}

impl std::error::Error for NoFaceFound {}

/// `persona faces`.
#[derive(clap::Args, Debug)]
pub struct FacesArgs {
    #[command(subcommand)]
    pub command: FacesCommand,
    #[command(flatten)]
    pub models: ModelFlags,
}

/// Where the models come from (see `docs/faces.md`, "Model lookup").
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelFlags {
    /// Models folder searched first (then $PERSONA_MODELS, ~/.cache/persona/models, ~/.insightface/models).
    #[arg(long, global = true, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Detector: an SCRFD .onnx (det_10g.onnx), one of MTCNN's pnet/rnet/onet.onnx, or a folder; or
    /// `none`: no detector, the whole image is the face (its centred square, resized to the recogniser's
    /// input; for drawn faces and non-face subjects). `none` is a keyword even if a file of that name
    /// exists (write ./none for the file).
    #[arg(long, global = true, value_name = "PATH|none")]
    pub detector: Option<PathBuf>,
    /// Recogniser .onnx (ArcFace w600k_r50.onnx, FaceNet …_160.onnx).
    #[arg(long, global = true, value_name = "PATH")]
    pub recognizer: Option<PathBuf>,
    /// Recogniser kind if it cannot be read from the graph: arcface or facenet.
    #[arg(long, global = true, value_name = "KIND", value_parser = parse_kind)]
    pub recognizer_kind: Option<RecognizerKind>,
}

fn parse_kind(s: &str) -> std::result::Result<RecognizerKind, String> {
    s.parse()
        .map_err(|e: persona_faces::FaceError| e.to_string())
}

#[derive(clap::Subcommand, Debug)]
pub enum FacesCommand {
    /// Find faces: boxes, scores and 5 landmarks per image.
    Detect {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Write the image(s) with boxes and points: a file for one image, else a folder.
        #[arg(long, value_name = "OUT")]
        draw: Option<PathBuf>,
    },
    /// Write the ArcFace-aligned crop of each image's largest face to DIR/<name>.png (with --detector none:
    /// the image's centred square, resized).
    Align {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Crop side in pixels (the template is scaled from 112).
        #[arg(long, default_value_t = 112)]
        size: u32,
    },
    /// Embed each image's largest face into FILE.safetensors (tensor `embeddings`, [N, D]).
    Embed {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Cosine similarity of the largest faces: one number for two images, a matrix for more.
    Compare {
        #[arg(required = true, num_args = 2..)]
        images: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl ModelFlags {
    fn search(&self) -> ModelSearch {
        ModelSearch {
            models_dir: self.models.clone(),
            detector: self.detector.clone(),
            recognizer: self.recognizer.clone(),
            recognizer_kind: self.recognizer_kind,
        }
    }
}

/// Runs a `persona faces` subcommand.
pub fn run(args: FacesArgs) -> Result<()> {
    let search = args.models.search();
    // A missing photo is named before any model is looked for.
    let inputs = match &args.command {
        FacesCommand::Detect { images, .. }
        | FacesCommand::Align { images, .. }
        | FacesCommand::Embed { images, .. }
        | FacesCommand::Compare { images, .. } => images,
    };
    if let Some(missing) = inputs.iter().find(|p| !p.exists()) {
        anyhow::bail!("{}: no such file or folder", missing.display());
    }
    match args.command {
        FacesCommand::Detect { images, json, draw } => {
            detect(&search, &images, json, draw.as_deref())
        }
        FacesCommand::Align { images, out, size } => align(&search, &images, &out, size),
        FacesCommand::Embed {
            images,
            out,
            overwrite,
        } => {
            crate::output::check_out_file(&out, overwrite, "--out")?;
            embed(&search, &images, &out)
        }
        FacesCommand::Compare { images, json } => compare(&search, &images, json),
    }
}

fn load_detector(search: &ModelSearch) -> Result<Box<dyn Detector>> {
    let d = search
        .load_detector()
        .context("loading the face detector")?;
    tracing::info!(detector = d.name(), "face detector loaded");
    Ok(d)
}

fn load_recognizer(search: &ModelSearch) -> Result<persona_faces::OnnxRecognizer> {
    let r = search
        .load_recognizer()
        .context("loading the face recogniser")?;
    tracing::info!(kind = ?r.kind(), path = %r.path().display(), "face recogniser loaded");
    Ok(r)
}

fn load(path: &Path) -> Result<RgbImage> {
    Ok(load_rgb(path)?)
}

fn no_face(images: Vec<PathBuf>) -> Result<()> {
    if images.is_empty() {
        return Ok(());
    }
    Err(NoFaceFound { images }.into())
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .to_string()
}

/// `dir/<stem><suffix>.png`, made unique among names already used in this run.
fn unique_name(dir: &Path, img: &Path, suffix: &str, used: &mut HashSet<String>) -> PathBuf {
    let base = format!("{}{suffix}", stem(img));
    let mut name = base.clone();
    let mut k = 2;
    while !used.insert(name.clone()) {
        name = format!("{base}_{k}");
        k += 1;
    }
    dir.join(format!("{name}.png"))
}

fn save_image_atomic(img: &RgbImage, path: &Path) -> Result<()> {
    let format = ImageFormat::from_path(path).unwrap_or(ImageFormat::Png);
    let mut buf = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut buf, format)
        .with_context(|| format!("encoding {}", path.display()))?;
    Ok(write_atomic(path, buf.get_ref())?)
}

/// Writes an image into `dir`, creating the folder first if needed: a folder appears only once there is a file
/// to put in it, so a run that fails earlier (no detector, an unreadable image, no face) leaves none behind.
fn save_into(dir: &Path, img: &RgbImage, target: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    save_image_atomic(img, target)
}

fn detect(search: &ModelSearch, images: &[PathBuf], json: bool, draw: Option<&Path>) -> Result<()> {
    let detector = load_detector(search)?;
    // One image and an OUT with an extension: OUT is the file; otherwise a folder.
    let draw_file = draw.filter(|d| images.len() == 1 && d.extension().is_some() && !d.is_dir());
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    let mut used = HashSet::new();
    for path in images {
        let img = load(path)?;
        let faces = detector.detect(&img)?;
        if faces.is_empty() {
            missing.push(path.clone());
        }
        if let Some(out) = draw {
            let drawn = draw_faces(&img, &faces);
            match draw_file {
                Some(f) => save_image_atomic(&drawn, f)?,
                None => save_into(out, &drawn, &unique_name(out, path, "_faces", &mut used))?,
            }
        }
        if json {
            reports.push(serde_json::json!({
                "image": path, "width": img.width(), "height": img.height(), "faces": faces,
            }));
        } else {
            println!("{}: {} face(s)", path.display(), faces.len());
            for (i, f) in faces.iter().enumerate() {
                let b = f.bbox;
                let lm: Vec<String> = f
                    .landmarks
                    .iter()
                    .map(|p| format!("({:.1},{:.1})", p[0], p[1]))
                    .collect();
                println!(
                    "  #{i} score {:.4} box [{:.1}, {:.1}, {:.1}, {:.1}] landmarks {}",
                    f.score,
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    lm.join(" ")
                );
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    no_face(missing)
}

/// The image with each face's box (green, best face; yellow, others) and landmarks (red).
fn draw_faces(img: &RgbImage, faces: &[Face]) -> RgbImage {
    let mut out = img.clone();
    let thick = ((img.width().min(img.height()) / 300).max(1)) as i64;
    let (w, h) = (out.width() as i64, out.height() as i64);
    let mut put = |x: i64, y: i64, c: Rgb<u8>| {
        if x >= 0 && y >= 0 && x < w && y < h {
            out.put_pixel(x as u32, y as u32, c);
        }
    };
    for (i, f) in faces.iter().enumerate() {
        let color = if i == 0 {
            Rgb([0, 230, 0])
        } else {
            Rgb([240, 220, 0])
        };
        let [x1, y1, x2, y2] = f.bbox.map(|v| v.round() as i64);
        for t in 0..thick {
            for x in x1..=x2 {
                put(x, y1 + t, color);
                put(x, y2 - t, color);
            }
            for y in y1..=y2 {
                put(x1 + t, y, color);
                put(x2 - t, y, color);
            }
        }
        let r = thick + 1;
        for p in f.landmarks {
            let (px, py) = (p[0].round() as i64, p[1].round() as i64);
            for dy in -r..=r {
                for dx in -r..=r {
                    put(px + dx, py + dy, Rgb([255, 0, 0]));
                }
            }
        }
    }
    out
}

fn align(search: &ModelSearch, images: &[PathBuf], out: &Path, size: u32) -> Result<()> {
    if size == 0 {
        bail!("--size must be at least 1");
    }
    let detector = load_detector(search)?;
    let mut missing = Vec::new();
    let mut used = HashSet::new();
    for path in images {
        let img = load(path)?;
        let Some(face) = largest(&detector.detect(&img)?) else {
            missing.push(path.clone());
            continue;
        };
        let crop = if detector.whole_image() {
            persona_faces::WholeImage::crop(&img, size)?
        } else {
            persona_faces::aligned_crop(&img, &face.landmarks, size)?
        };
        let target = unique_name(out, path, "", &mut used);
        save_into(out, &crop, &target)?;
        println!("{} -> {}", path.display(), target.display());
    }
    no_face(missing)
}

/// A face and its embedding.
type Embedded = (Face, Vec<f32>);

/// Largest face and embedding of every image, the recogniser's and the detector's names; `Err(NoFaceFound)`
/// if any has none.
fn embed_all(
    search: &ModelSearch,
    images: &[PathBuf],
) -> Result<(Vec<Embedded>, String, &'static str)> {
    let detector = load_detector(search)?;
    let recognizer = load_recognizer(search)?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for path in images {
        let img = load(path)?;
        match largest(&detector.detect(&img)?) {
            Some(face) => found.push((face, recognizer.embed(&img, &face)?)),
            None => missing.push(path.clone()),
        }
    }
    no_face(missing)?;
    let model = format!("{:?}:{}", recognizer.kind(), recognizer.path().display()).to_lowercase();
    Ok((found, model, detector.name()))
}

fn embed(search: &ModelSearch, images: &[PathBuf], out: &Path) -> Result<()> {
    use candle_core::{Device, Tensor};
    let (found, model, detector) = embed_all(search, images)?;
    let (n, dim) = (found.len(), found[0].1.len());
    let tensor = |values: Vec<f32>, shape: &[usize]| Tensor::from_vec(values, shape, &Device::Cpu);
    let emb = found.iter().flat_map(|(_, e)| e.iter().copied()).collect();
    let boxes = found.iter().flat_map(|(f, _)| f.bbox).collect();
    let lms = found
        .iter()
        .flat_map(|(f, _)| f.landmarks.into_iter().flatten())
        .collect();
    let scores = found.iter().map(|(f, _)| f.score).collect();
    let tensors = std::collections::BTreeMap::from([
        ("embeddings".to_string(), tensor(emb, &[n, dim])?),
        ("boxes".to_string(), tensor(boxes, &[n, 4])?),
        ("landmarks".to_string(), tensor(lms, &[n, 5, 2])?),
        ("scores".to_string(), tensor(scores, &[n])?),
    ]);
    let meta = std::collections::HashMap::from([
        ("images".to_string(), serde_json::to_string(images)?),
        ("recognizer".to_string(), model),
        ("detector".to_string(), detector.to_string()),
    ]);
    persona_diffusion::safetensors_file::write(out, &tensors, Some(meta))?;
    println!("{n} embedding(s) of size {dim} -> {}", out.display());
    Ok(())
}

fn compare(search: &ModelSearch, images: &[PathBuf], json: bool) -> Result<()> {
    let (found, ..) = embed_all(search, images)?;
    let n = found.len();
    let m: Vec<Vec<f32>> = (0..n)
        .map(|i| (0..n).map(|j| cosine(&found[i].1, &found[j].1)).collect())
        .collect();
    if json {
        println!("{}", serde_json::json!({ "images": images, "cosine": m }));
    } else if n == 2 {
        println!("{:.4}", m[0][1]);
    } else {
        for (i, p) in images.iter().enumerate() {
            println!("[{i}] {}", p.display());
        }
        let header: Vec<String> = (0..n).map(|j| format!("{:>7}", format!("[{j}]"))).collect();
        println!("     {}", header.join(""));
        for (i, row) in m.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:>7.3}")).collect();
            println!("{:>4} {}", format!("[{i}]"), cells.join(""));
        }
    }
    Ok(())
}
