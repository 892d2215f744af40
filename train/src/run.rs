//! The `train` and `eval` workflows: output directory, data, epochs, files.

pub use crate::rundir::{RunDir, RunLock, CONFIG_FILE, LOCK_FILE, METRICS_FILE, SUMMARY_FILE};

use crate::provenance::DataRecord;
use crate::{
    callbacks::{Callback, Checkpointer, DivergenceGuard, LogEpoch, MetricsFile, Progress},
    checkpoint::{self, CHECKPOINT_FILE, STATE_FILE},
    config::RunConfig,
    metrics::EpochMetrics,
    rundir::read_metrics,
    trainer::Trainer,
};
use anyhow::Context;
use candle_core::Device;
use serde::Serialize;
use std::{
    io::Write,
    path::{Path, PathBuf},
};
use supermask_core::{fsio::write_atomic, Result};
use supermask_datasets::{load_by_name, Dataset, Split};

/// How `train` treats the output directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Start a run; fail if the directory already holds one.
    Fresh,
    /// Continue the run in the directory from its last checkpoint.
    Resume,
    /// Whatever brings the directory to a finished run of this config: nothing when it is
    /// finished, resume when it holds a checkpoint, start otherwise. The directory's config
    /// must equal the requested one. Sweeps and their emitted commands use this, so a killed
    /// or requeued job picks up where it stopped.
    Continue,
}

/// What `train` should do.
pub struct TrainRequest {
    /// The effective config.
    pub config: RunConfig,
    /// Output directory.
    pub out: PathBuf,
    /// Data root.
    pub data_dir: PathBuf,
    /// Start, resume or continue.
    pub start: Start,
    /// Stop after this epoch (the run can be resumed later).
    pub stop_after: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
    /// Compute device.
    pub device: Device,
    /// Callbacks added after the standard ones (progress, log, metrics file, checkpointer,
    /// divergence guard).
    pub callbacks: Vec<Box<dyn Callback>>,
}

/// `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// Epochs trained.
    pub epochs: usize,
    /// Seed.
    pub seed: u64,
    /// Last epoch's metrics.
    #[serde(flatten)]
    pub last: &'a EpochMetrics,
    /// Sum of the epochs' training seconds.
    pub total_train_seconds: f64,
    /// Mean training seconds per epoch.
    pub mean_epoch_seconds: f64,
}

/// Loads one split named by the config, checking its sample shape.
fn load_checked(cfg: &RunConfig, data_dir: &Path, split: Split) -> Result<Dataset> {
    let ds = &cfg.data.dataset;
    let data = load_by_name(data_dir, ds, split)?;
    let want = cfg.input_shape()?;
    if cfg.data.shape.is_some() {
        anyhow::ensure!(
            data.shape == want,
            "the {ds} {split:?} samples under {} have shape {:?}; data.shape says {want:?}",
            data_dir.display(),
            data.shape
        );
    }
    anyhow::ensure!(
        data.shape == want,
        "the {ds} {split:?} files under {} hold samples of shape {:?}; {ds} samples are {want:?}",
        data_dir.display(),
        data.shape
    );
    Ok(data)
}

/// The data of a run: the training set, the held-out validation set (`data.validation`), the
/// test set.
#[derive(Debug)]
pub struct Splits {
    /// What the optimizer sees.
    pub train: Dataset,
    /// Training images held out and evaluated after every epoch, when `data.validation` is set.
    pub validation: Option<Dataset>,
    /// The test split.
    pub test: Dataset,
}

/// Loads the splits named by the config: `data.validation` seeded images are held out of the
/// training split first, then the rest is reduced to `data.train_subset` samples when that is
/// set.
pub fn load_data(cfg: &RunConfig, data_dir: &Path) -> Result<Splits> {
    let mut train = load_checked(cfg, data_dir, Split::Train)?;
    let mut validation = None;
    if let Some(n) = cfg.data.validation {
        let (rest, held) = train
            .hold_out(n, cfg.data.validation_seed)
            .context("data.validation")?;
        (train, validation) = (rest, Some(held));
    }
    if let Some(n) = cfg.data.train_subset {
        train = train
            .subset(n, cfg.data.subset_seed)
            .context("data.train_subset")?;
    }
    let test = load_checked(cfg, data_dir, Split::Test)?;
    anyhow::ensure!(
        train.n > 0 && test.n > 0,
        "the {} data under {} has {} training and {} test samples; both must be non-empty",
        cfg.data.dataset,
        data_dir.display(),
        train.n,
        test.n
    );
    Ok(Splits {
        train,
        validation,
        test,
    })
}

/// The metrics of `out` when it holds a finished run of `cfg`; `None` when it holds no run or
/// an unfinished one; an error when it holds a run of another config.
pub fn finished_run(out: &Path, cfg: &RunConfig) -> Result<Option<Vec<EpochMetrics>>> {
    if !out.join(CONFIG_FILE).exists() {
        return Ok(None);
    }
    let run = RunDir::open(out)?;
    anyhow::ensure!(
        run.config.to_toml()? == cfg.to_toml()?,
        "{} holds a run of another config; choose another --out",
        out.display()
    );
    Ok(run.is_finished().then_some(run.metrics))
}

/// Trains as requested under the output directory's lock; returns the metrics of every epoch.
pub fn train(req: TrainRequest) -> Result<Vec<EpochMetrics>> {
    train_locked(req, None)
}

/// [`train`] with the directory's lock already taken by the caller (a sweep worker), or, with
/// `None`, taken once the data and model checks have passed (a run that fails them leaves no
/// directory behind).
pub fn train_locked(req: TrainRequest, lock: Option<RunLock>) -> Result<Vec<EpochMetrics>> {
    let cfg = &req.config;
    let device = req.device.clone();
    // Everything that can fail before training is checked before the directory is touched.
    let Splits {
        train: train_set,
        validation,
        test: test_set,
    } = load_data(cfg, &req.data_dir)?;
    let mut trainer = Trainer::new(cfg, &train_set.shape, &device)?;
    trainer.check_data(&train_set)?;
    trainer.check_data(&test_set)?;

    let out = &req.out;
    let _lock = match lock {
        Some(l) => l,
        None => RunLock::acquire(out)?,
    };
    // Under the lock nobody else writes here: what a killed writer left is garbage.
    let stale = supermask_core::fsio::remove_stale_temps(out)?;
    if stale > 0 {
        tracing::info!(
            "{}: removed {stale} temporary file(s) of an interrupted write",
            out.display()
        );
    }
    let mut resume = req.start == Start::Resume;
    if req.start == Start::Continue {
        if let Some(history) = finished_run(out, cfg)? {
            tracing::info!("{} is already finished", out.display());
            return Ok(history);
        }
        // The checkpoint holds its own loop state (state.json is a mirror written after it).
        resume = out.join(CHECKPOINT_FILE).exists();
    }
    let data_record = DataRecord::of(&req.data_dir, &cfg.data.dataset, &train_set, &test_set);
    if resume {
        if let Some(recorded) = DataRecord::read(out)? {
            recorded.check_same(&data_record, out)?;
        }
    }
    let mut history;
    let start_epoch;
    if resume {
        let state = checkpoint::load(out, &mut trainer, &device, true)?;
        history = read_metrics(&out.join(METRICS_FILE))?;
        anyhow::ensure!(
            history.len() >= state.epoch,
            "{}: has {} epochs of metrics but the checkpoint is at epoch {}",
            out.display(),
            history.len(),
            state.epoch
        );
        history.truncate(state.epoch);
        // Every epoch runs the same number of steps, so the checkpoint's step count follows
        // from its epoch (a corrupt count would shift every schedule and random stream).
        let per_epoch = train_set.n.div_ceil(cfg.data.batch_size) as u64;
        let want = (state.epoch as u64).checked_mul(per_epoch);
        anyhow::ensure!(
            want == Some(state.step),
            "{}: the checkpoint says {} steps after epoch {}, but {} epochs of {} batches are {} \
             steps; the checkpoint is corrupt or from other data",
            out.join(CHECKPOINT_FILE).display(),
            state.step,
            state.epoch,
            state.epoch,
            per_epoch,
            want.map_or("more than 2^64".to_string(), |w| w.to_string())
        );
        anyhow::ensure!(
            cfg.train.epochs >= state.epoch,
            "{} already holds {} epochs; --set train.epochs={} would shorten it (use a value >= {})",
            out.display(),
            state.epoch,
            cfg.train.epochs,
            state.epoch
        );
        start_epoch = state.epoch;
        // state.json mirrors the checkpoint; a kill between their renames leaves it behind.
        let mirror = serde_json::to_string_pretty(&state)?;
        if std::fs::read_to_string(out.join(STATE_FILE))
            .ok()
            .as_deref()
            != Some(mirror.as_str())
        {
            write_atomic(&out.join(STATE_FILE), mirror.as_bytes())?;
        }
        tracing::info!("resuming {} after epoch {}", out.display(), start_epoch);
    } else {
        if out.join(STATE_FILE).exists() || out.join(SUMMARY_FILE).exists() {
            anyhow::bail!(
                "{} already holds a run; continue it with --resume {0} or choose another --out",
                out.display()
            );
        }
        history = Vec::new();
        start_epoch = 0;
    }
    write_atomic(&out.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    data_record.write(out)?;
    // A finished run that is extended is no longer finished.
    let _ = std::fs::remove_file(out.join(SUMMARY_FILE));

    let end = cfg.train.epochs.min(req.stop_after.unwrap_or(usize::MAX));
    if req.progress {
        trainer.add_callback(Box::new(Progress::new(cfg.train.epochs)));
    }
    trainer.add_callback(Box::new(LogEpoch));
    trainer.add_callback(Box::new(MetricsFile::new(&out.join(METRICS_FILE))));
    trainer.add_callback(Box::new(crate::tensorboard::TensorBoard::new(out)?));
    trainer.add_callback(Box::new(Checkpointer::new(out)));
    trainer.add_callback(Box::new(DivergenceGuard::new(
        cfg.train.guard.clone(),
        cfg.loss.max_value(),
    )));
    for callback in req.callbacks {
        trainer.add_callback(callback);
    }
    trainer
        .fit(
            &train_set,
            validation.as_ref(),
            &test_set,
            start_epoch..end,
            cfg.train.epochs,
            &mut history,
        )
        .with_context(|| {
            format!(
                "{} holds the checkpoint and metrics of the last finished epoch ({})",
                out.display(),
                history.len()
            )
        })?;

    if history.len() == cfg.train.epochs {
        let last = history.last().context("no epoch trained")?;
        let total: f64 = history.iter().map(|m| m.seconds).sum();
        let summary = Summary {
            epochs: history.len(),
            seed: cfg.seed,
            last,
            total_train_seconds: total,
            mean_epoch_seconds: total / history.len() as f64,
        };
        write_atomic(
            &out.join(SUMMARY_FILE),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(history)
}

/// Result of `eval`.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy (fraction).
    pub test_acc: f64,
    /// Remaining weights (fraction).
    pub remaining: f64,
    /// Per-layer mask statistics.
    pub layers: Vec<crate::metrics::LayerMetrics>,
}

/// Evaluates the checkpoint in a run directory on its config's test set.
pub fn eval(dir: &Path, data_dir: &Path, device: &Device) -> Result<EvalReport> {
    let run = RunDir::open(dir)?;
    let test = load_checked(&run.config, data_dir, Split::Test)?;
    let trainer = run.trained(&test.shape, device)?;
    trainer.check_data(&test)?;
    let stats = trainer.evaluate(&test)?;
    let (remaining, layers) = trainer.layer_metrics()?;
    Ok(EvalReport {
        test_loss: stats.loss,
        test_acc: stats.acc,
        remaining,
        layers,
    })
}

/// Prints an eval report for people.
pub fn print_eval(report: &EvalReport, w: &mut dyn Write) -> Result<()> {
    writeln!(w, "test loss      {:.4}", report.test_loss)?;
    writeln!(w, "test accuracy  {:.4}", report.test_acc)?;
    writeln!(w, "remaining      {:.4}", report.remaining)?;
    for l in &report.layers {
        writeln!(
            w,
            "  {:<12} remaining {:.4}  -1 {:.4}  0 {:.4}  +1 {:.4}  ({} weights)",
            l.name, l.remaining, l.neg, l.zero, l.pos, l.weights
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::write_metrics;

    /// A resumed run rewrites its earlier metric lines from what it read back, so the file's
    /// numbers must survive a read and a write unchanged. 3398 / 30000 (a layer's zero share
    /// in a real run) came back one unit in the last place off with serde_json's default
    /// float parser; the workspace enables its exact `float_roundtrip`.
    #[test]
    fn metrics_survive_a_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let layer = crate::metrics::LayerMetrics {
            name: "fc2".into(),
            remaining: 1.0 - 3398.0 / 30000.0,
            neg: 13133.0 / 30000.0,
            zero: 3398.0 / 30000.0,
            pos: 13469.0 / 30000.0,
            weights: 30000,
            tau_n: Some(-0.01),
            tau_p: Some(0.01),
        };
        let m = EpochMetrics {
            epoch: 1,
            step: 469,
            lr: 0.05 * 0.96f64.powi(7),
            train_loss: 0.407_204_171_808_560_67,
            train_acc: 0.902_733_333_333_333_4,
            test_loss: 0.183_459_310_436_248_77,
            test_acc: 0.9445,
            val_loss: None,
            val_acc: None,
            remaining: 0.833_399_699_474_079_7,
            seconds: 1.118_144_181,
            eval_seconds: 0.081_188_058,
            layers: vec![layer],
        };
        let first = vec![m];
        write_metrics(&path, &first).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let read = read_metrics(&path).unwrap();
        assert_eq!(read, first);
        write_metrics(&path, &read).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
