//! Run directories: the files a run writes, the lock a training process holds, and the one way
//! to open a run for reading ([`RunDir::open`]), which `eval`, `export`, `infer --compare`,
//! `aggregate`, `report`, resume and sweeps all use.

use crate::{
    checkpoint::{self, CHECKPOINT_FILE},
    config::RunConfig,
    metrics::EpochMetrics,
    trainer::Trainer,
};
use anyhow::Context;
use candle_core::Device;
use std::path::{Path, PathBuf};
use supermask_core::Result;

/// File names written into a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Per-epoch metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Final values; its presence marks a finished run.
pub const SUMMARY_FILE: &str = "summary.json";
/// Lock file: a process training a run directory holds an exclusive lock on it.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive advisory lock (`flock`) on a run directory, held while a process trains it.
/// The operating system releases it when the process exits, however it exits (SIGKILL
/// included), so a stale lock never blocks a restart.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    fn open(dir: &Path) -> Result<std::fs::File> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Takes the lock of `dir` (created if missing); `None` when another process holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<Self>> {
        let file = Self::open(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::Error::new(e).context(format!("locking {}", dir.display())))
            }
        }
    }

    /// Takes the lock of `dir`, or fails with a clear error when another process trains it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        Self::try_acquire(dir)?.with_context(|| {
            format!(
                "{} is being trained by another process (it holds {}); wait for it or choose another --out",
                dir.display(),
                dir.join(LOCK_FILE).display()
            )
        })
    }

    /// Waits until the lock of `dir` is free, then takes it.
    pub fn wait(dir: &Path) -> Result<Self> {
        let file = Self::open(dir)?;
        file.lock()
            .with_context(|| format!("locking {}", dir.display()))?;
        Ok(Self { _file: file })
    }
}

/// A run directory opened for reading: its effective config and the metrics of the epochs it
/// has finished.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
    /// The effective config (`config.toml`).
    pub config: RunConfig,
    /// Every finished epoch's metrics (`metrics.jsonl`; empty before the first epoch).
    pub metrics: Vec<EpochMetrics>,
}

impl RunDir {
    /// Opens the run in `dir`; an error names the directory when it holds no run.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &[])
    }

    /// [`RunDir::open`] with `--set` overrides applied to the stored config (resume with more
    /// epochs).
    pub fn open_with(dir: &Path, set: &[String]) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        anyhow::ensure!(
            path.is_file(),
            "{} holds no run (no {CONFIG_FILE}); pass a directory written by `supermask train`",
            dir.display()
        );
        let config = RunConfig::load(Some(&path), set)?;
        let metrics = read_metrics(&dir.join(METRICS_FILE))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            metrics,
        })
    }

    /// Whether the run finished: `summary.json` is written and every configured epoch has
    /// metrics.
    pub fn is_finished(&self) -> bool {
        self.dir.join(SUMMARY_FILE).is_file() && self.metrics.len() == self.config.train.epochs
    }

    /// Whether the run has a checkpoint.
    pub fn has_checkpoint(&self) -> bool {
        self.dir.join(CHECKPOINT_FILE).is_file()
    }

    /// A trainer with the run's model for per-sample inputs of shape `input`, holding the
    /// checkpoint's tensors (model and thresholds; no optimizer state).
    pub fn trained(&self, input: &[usize], device: &Device) -> Result<Trainer> {
        anyhow::ensure!(
            self.has_checkpoint(),
            "{} holds no checkpoint ({CHECKPOINT_FILE}); pass a directory written by `supermask train`",
            self.dir.display()
        );
        let mut trainer = Trainer::new(&self.config, input, device)?;
        checkpoint::load(&self.dir, &mut trainer, device, false)?;
        Ok(trainer)
    }

    /// [`RunDir::trained`] for the input shape of the config's dataset (no data needed).
    pub fn trained_for_config(&self, device: &Device) -> Result<Trainer> {
        self.trained(&self.config.input_shape()?, device)
    }
}

/// Reads a `metrics.jsonl`; a missing file is an empty history. Errors name the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}
