//! Files written atomically: every file supermask writes (configs, metrics, checkpoints,
//! models, datasets, figures, reports) goes through [`write_atomic`] or [`write_atomic_with`].
//!
//! The bytes go to a new temporary file in the target's directory, which is flushed to disk
//! (`fsync`) and then renamed over the target; the directory is synced after the rename on
//! Unix. A process killed at any instant, or a full disk, leaves either the previous file or
//! the new one, never a truncated mix, and no temporary file survives a failed write.

use anyhow::Context;
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::Result;

/// Writes `bytes` to `path` atomically (see the module docs). Creates the parent directory
/// when it is missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(tmp)
            .with_context(|| format!("opening {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Atomically replaces `path` with what `write` puts into the temporary file whose path it
/// receives (for writers that take a path, such as safetensors or an image encoder). The
/// temporary file exists (empty) when `write` is called; after `write` returns it is synced
/// and renamed over `path`. On any error it is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    replace(path, write).with_context(|| format!("writing {}", path.display()))
}

fn replace(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("creating directory {}", parent.display()))?;
    let tmp = create_temp(&parent, path)?;
    let result = write(&tmp)
        .and_then(|()| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", tmp.display()))
        })
        .and_then(|()| {
            if let Some(name) = path.file_name() {
                fail_point(&format!("before-rename:{}", name.to_string_lossy()));
            }
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&parent);
    Ok(())
}

/// Environment variable naming a fault-injection point ([`fail_point`]).
pub const FAIL_POINT_ENV: &str = "SUPERMASK_FAIL_POINT";

/// Fault injection for the kill-at-each-write tests: when `SUPERMASK_FAIL_POINT` equals
/// `point`, the process aborts here, as a kill at this instant would leave it. The points are
/// `before-rename:FILE` (every atomic write, after its temporary file is complete and before
/// the rename) and `between-checkpoint-and-state` (after the checkpoint's rename, before
/// `state.json`'s). `POINT#N` aborts the N-th time the process reaches the point (1-based;
/// `#1` is the default). Unset, this is one environment lookup.
pub fn fail_point(point: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some(value) = std::env::var_os(FAIL_POINT_ENV) else {
        return;
    };
    let value = value.to_string_lossy();
    let (name, nth) = match value.rsplit_once('#') {
        Some((name, n)) => (name, n.parse::<u64>().unwrap_or(1)),
        None => (value.as_ref(), 1),
    };
    if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("{FAIL_POINT_ENV}={value}: aborting here");
        std::process::abort();
    }
}

/// Removes the temporary files ([`write_atomic`]'s `.tmp-*`) that a killed writer left in
/// `dir`; returns how many. Call it only where no other process writes (a run directory under
/// its lock).
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let is_temp = entry.file_name().to_string_lossy().starts_with(".tmp-");
        if is_temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A fresh, empty temporary file `.tmp-PID-N-NAME` beside `path`, created exclusively so two
/// writers never share one. It ends in the target's name, so writers that pick a format by the
/// extension (image encoders) see the target's.
fn create_temp(dir: &Path, path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?
        .to_string_lossy();
    let mut attempt = 0;
    loop {
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(_) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
        }
    }
}

/// Makes the rename durable: syncs the directory entry (Unix; a no-op elsewhere, and best
/// effort, since some file systems refuse to sync directories).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "supermask-fsio-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = temp_dir();
        let path = dir.join("a.json");
        write_atomic(&path, b"first, longer content").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(entries(&dir), ["a.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn creates_missing_parent_directories() {
        let dir = temp_dir();
        let path = dir.join("x/y/z.txt");
        write_atomic(&path, b"z").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"z");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer that fails keeps the old file byte for byte and removes its temporary file;
    /// the error names the target.
    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = temp_dir();
        let path = dir.join("model.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, b"half of the new").unwrap();
            anyhow::bail!("encoder failed")
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("model.bin") && msg.contains("encoder failed"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(&dir), ["model.bin"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains('/'), "{err:#}");
    }
}
