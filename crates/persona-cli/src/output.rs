//! Where commands write: checks made before any work starts (nothing existing is replaced without
//! `--overwrite`, the destination is writable, a refused command leaves no folder behind) and the lock that
//! keeps two training runs off the same output.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Refuses a single output file that exists (unless `overwrite`) or whose folder cannot be written.
pub fn check_out_file(path: &Path, overwrite: bool, what: &str) -> Result<()> {
    if path.is_dir() {
        bail!("{what} {} is a folder; give a file name", path.display());
    }
    if path.exists() && !overwrite {
        bail!(
            "{what} {} exists; choose another or pass --overwrite (nothing was written)",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_writable(dir, what)
}

/// Refuses an output folder that holds any of `names` (unless `overwrite`), is a file, or cannot be
/// created/written. Creates nothing: the command creates the folder when it writes its first file.
pub fn check_out_dir(dir: &Path, names: &[String], overwrite: bool, what: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{what} {} is a file, not a folder", dir.display());
    }
    if !overwrite {
        let existing: Vec<&String> = names.iter().filter(|n| dir.join(n).exists()).collect();
        if let Some(first) = existing.first() {
            bail!(
                "{what} {} already holds {first}{}; choose another folder or pass --overwrite (nothing was written)",
                dir.display(),
                match existing.len() {
                    1 => String::new(),
                    n => format!(" and {} more of the files this run writes", n - 1),
                }
            );
        }
    }
    check_writable(dir, what)
}

/// Whether files can be created in `dir` (or, while it does not exist, in its nearest existing ancestor,
/// where it would be created): probed with a temporary file that is removed at once.
pub fn check_writable(dir: &Path, what: &str) -> Result<()> {
    let mut probe_dir = dir.to_path_buf();
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p.to_path_buf(),
            _ => {
                probe_dir = PathBuf::from(".");
                break;
            }
        }
    }
    if !probe_dir.is_dir() {
        bail!(
            "{what} {}: {} is a file, not a folder",
            dir.display(),
            probe_dir.display()
        );
    }
    let probe = probe_dir.join(format!(".persona-write-test.{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "{what} {}: cannot write in {} ({e})",
            dir.display(),
            probe_dir.display()
        ),
    }
}

/// An exclusive claim on an output path, held while a run writes it: `PATH.lock`, created with
/// `create_new` (atomic: of two runs only one gets it) and holding the owner's pid. Removed when dropped, so
/// on success and on every error return; a run killed with SIGKILL leaves it behind, and the next run names
/// that pid and says to delete the file once the process is gone.
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// The lock file beside `target`.
    pub fn path_for(target: &Path) -> PathBuf {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        target.with_file_name(name)
    }

    /// Takes the lock of `target`, or fails naming the run holding it.
    pub fn acquire(target: &Path, flag: &str) -> Result<Self> {
        let path = Self::path_for(target);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{}", std::process::id());
                Ok(Self { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let owner = owner.trim();
                let alive = !owner.is_empty() && Path::new("/proc").join(owner).exists();
                let state = if alive {
                    format!("process {owner} is still running")
                } else if owner.is_empty() {
                    "its owner is unknown".to_string()
                } else {
                    format!("process {owner} is no longer running: a killed run left it; delete the lock file and rerun (with --resume to continue from the checkpoint)")
                };
                bail!(
                    "{flag} {} is locked by another training run ({} exists; {state})",
                    target.display(),
                    path.display()
                )
            }
            Err(e) => bail!(
                "{flag} {}: cannot create the lock file {} ({})",
                target.display(),
                path.display(),
                std::io::Error::from(e.kind())
            ),
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
