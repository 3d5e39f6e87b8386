//! Images out: [0, 1] tensors to 8-bit RGB as diffusers rounds them, PNGs that carry their generation
//! parameters in text chunks, written atomically.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// `[N, 3, H, W]` in [0, 1] → images, `round(x·255)` as diffusers' `numpy_to_pil`.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Rgb8>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::Msg(format!("expected 3 channels, got {c}")));
    }
    let u8s = (images.permute((0, 2, 3, 1))? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?;
    let flat = u8s.flatten_all()?.to_vec1::<u8>()?;
    Ok(flat
        .chunks(h * w * 3)
        .take(n)
        .map(|d| Rgb8 {
            width: w,
            height: h,
            data: d.to_vec(),
        })
        .collect())
}

/// Writes a PNG with text chunks (`parameters` in the AUTOMATIC1111 convention, so other tools read it, and
/// any further key/value pairs), via a temporary file renamed into place.
pub fn write_png(path: &Path, img: &Rgb8, text: &[(&str, String)]) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.to_string(), v.clone())
                .map_err(|e| Error::file(path, e))?;
        }
        let mut w = enc.write_header().map_err(|e| Error::file(path, e))?;
        w.write_image_data(&img.data)
            .map_err(|e| Error::file(path, e))?;
    }
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a sibling temporary file (synced) and a rename, so a reader never sees
/// half a file and a crash, a full disk or an interrupted run leaves the old file intact (rename is atomic on one
/// filesystem); the temporary file is removed on failure. The one atomic writer of the workspace: images,
/// identity files, checkpoints, embeddings, JSON records.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| Error::io(path, e))
}

/// `.<name>.tmp-<pid>-<n>` beside `path`: hidden, and unique across processes and threads.
fn temp_path(path: &Path) -> Result<std::path::PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file name"))?;
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(
        ".{}.tmp-{}-{unique}",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(path.with_file_name(tmp_name))
}

/// Reads the text chunks of a PNG (to check what [`write_png`] stored).
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| Error::file(path, e))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.utf8_text {
        out.push((
            t.keyword.clone(),
            t.get_text().map_err(|e| Error::file(path, e))?,
        ));
    }
    Ok(out)
}
