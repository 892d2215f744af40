//! Callbacks of the training loop ([`Trainer::fit`](crate::Trainer::fit)), as in open_lth's
//! standard callbacks and burn-train's learner: everything the loop does besides the forward,
//! backward and optimizer step is a [`Callback`], so a researcher adds behaviour (a metric, an
//! early stop, a custom log) without copying the loop.
//!
//! A trainer starts with [`ThresholdUpdates`] when its threshold rule updates during training;
//! [`crate::run::train`] adds, in this order, [`Progress`] (on a terminal), [`LogEpoch`],
//! [`MetricsFile`], [`TensorBoard`](crate::tensorboard::TensorBoard), [`Checkpointer`] and
//! [`DivergenceGuard`]. Callbacks run in the order they
//! were added; an error from any of them stops training with that error.

use crate::{
    checkpoint::{self, LoopState},
    config::GuardConfig,
    metrics::EpochMetrics,
    trainer::Trainer,
};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use supermask_core::{
    fsio::write_atomic, model::masked_layers_mut, Model, Result, Threshold, UpdateEvery,
};

/// Where the loop stands after an optimizer step.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// Batches done in this epoch (1-based index of the batch just trained).
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Optimizer steps done in the run.
    pub step: u64,
    /// The batch's mean loss.
    pub loss: f64,
}

/// What an epoch-end callback sees: the epoch's metrics (the last entry of `history`) and the
/// run so far.
#[derive(Clone, Copy, Debug)]
pub struct EpochEnd<'a> {
    /// The epoch just finished.
    pub metrics: &'a EpochMetrics,
    /// Every epoch's metrics so far, this one last (a resumed run includes the earlier ones).
    pub history: &'a [EpochMetrics],
    /// Epochs the run is configured for.
    pub epochs: usize,
    /// Classes of the test set (chance level is 1 / classes).
    pub classes: usize,
}

/// One piece of the training loop's behaviour. Every hook does nothing by default.
pub trait Callback {
    /// A short name for messages (`"checkpointer"`).
    fn name(&self) -> &str;

    /// After every optimizer step; may change the model (threshold updates do).
    fn on_step(&mut self, _model: &mut dyn Model, _step: &StepInfo) -> Result<()> {
        Ok(())
    }

    /// After an epoch's last step, before evaluation; may change the model.
    fn on_train_end(&mut self, _model: &mut dyn Model, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// After the epoch's evaluation, with its metrics recorded.
    fn on_epoch_end(&mut self, _trainer: &Trainer, _end: &EpochEnd<'_>) -> Result<()> {
        Ok(())
    }
}

/// Recomputes the thresholds of a rule that updates during training (`every() = Step` after
/// each optimizer step, `Epoch` after each epoch's last step); rules fixed at init never
/// change.
pub struct ThresholdUpdates {
    rule: Arc<dyn Threshold>,
}

impl ThresholdUpdates {
    /// The updater for `rule`; `None` when the rule never updates.
    pub fn new(rule: Arc<dyn Threshold>) -> Option<Self> {
        (rule.every() != UpdateEvery::Never).then_some(Self { rule })
    }

    /// New thresholds for steps of the 0-based `epoch`.
    fn update(&self, model: &mut dyn Model, epoch: usize) -> Result<()> {
        let mut masked = masked_layers_mut(model);
        let scores: Vec<Tensor> = masked
            .iter()
            .map(|m| m.scores().as_tensor().detach())
            .collect();
        let current: Vec<_> = masked.iter().map(|m| m.taus()).collect();
        let taus = self.rule.update_at(&scores, &current, epoch)?;
        for (m, t) in masked.iter_mut().zip(taus) {
            m.set_taus(t)?;
        }
        Ok(())
    }
}

impl Callback for ThresholdUpdates {
    fn name(&self) -> &str {
        "threshold updates"
    }

    fn on_step(&mut self, model: &mut dyn Model, step: &StepInfo) -> Result<()> {
        if self.rule.every() == UpdateEvery::Step {
            // The thresholds serve the next step: after an epoch's last batch, the next epoch's.
            let next = step.epoch + usize::from(step.batch == step.batches);
            self.update(model, next)?;
        }
        Ok(())
    }

    fn on_train_end(&mut self, model: &mut dyn Model, epoch: usize) -> Result<()> {
        if self.rule.every() == UpdateEvery::Epoch {
            self.update(model, epoch + 1)?;
        }
        Ok(())
    }
}

/// A progress bar per epoch with the last batch's loss (for terminals).
pub struct Progress {
    epochs: usize,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A progress display for a run of `epochs` epochs.
    pub fn new(epochs: usize) -> Self {
        Self { epochs, bar: None }
    }
}

impl Callback for Progress {
    fn name(&self) -> &str {
        "progress"
    }

    fn on_step(&mut self, _model: &mut dyn Model, s: &StepInfo) -> Result<()> {
        let epochs = self.epochs;
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(s.batches as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {elapsed}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {}/{epochs}", s.epoch + 1));
            bar
        });
        bar.set_position(s.batch as u64);
        bar.set_message(format!("loss {:.4}", s.loss));
        Ok(())
    }

    fn on_train_end(&mut self, _model: &mut dyn Model, _epoch: usize) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(())
    }
}

/// Logs each epoch's metrics and mask shares (`tracing`, level info).
pub struct LogEpoch;

impl Callback for LogEpoch {
    fn name(&self) -> &str {
        "log"
    }

    fn on_epoch_end(&mut self, _trainer: &Trainer, e: &EpochEnd<'_>) -> Result<()> {
        let m = e.metrics;
        let join = |f: &dyn Fn(&crate::metrics::LayerMetrics) -> String| {
            m.layers.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        let val = match (m.val_loss, m.val_acc) {
            (Some(l), Some(a)) => format!(" | val loss {l:.4} acc {a:.4}"),
            _ => String::new(),
        };
        tracing::info!(
            "epoch {}/{} train loss {:.4} acc {:.4}{val} | test loss {:.4} acc {:.4} | remaining {:.4} [{}] | {:.2}s",
            m.epoch,
            e.epochs,
            m.train_loss,
            m.train_acc,
            m.test_loss,
            m.test_acc,
            m.remaining,
            join(&|l| format!("{} {:.4}", l.name, l.remaining)),
            m.seconds
        );
        tracing::info!(
            "epoch {} mask shares -1/0/+1: {}",
            m.epoch,
            join(&|l| format!("{} {:.4}/{:.4}/{:.4}", l.name, l.neg, l.zero, l.pos))
        );
        Ok(())
    }
}

/// Rewrites `metrics.jsonl` (one JSON object per epoch) with the whole history.
pub struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    /// Writes to `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }
}

/// Writes `history` as JSON lines to `path`, atomically.
pub fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

impl Callback for MetricsFile {
    fn name(&self) -> &str {
        "metrics file"
    }

    fn on_epoch_end(&mut self, _trainer: &Trainer, e: &EpochEnd<'_>) -> Result<()> {
        write_metrics(&self.path, e.history)
    }
}

/// Saves the checkpoint (model, optimizer and loop state) into a run directory after every
/// epoch.
pub struct Checkpointer {
    dir: PathBuf,
}

impl Checkpointer {
    /// Saves into `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

impl Callback for Checkpointer {
    fn name(&self) -> &str {
        "checkpointer"
    }

    fn on_epoch_end(&mut self, trainer: &Trainer, e: &EpochEnd<'_>) -> Result<()> {
        checkpoint::save(
            &self.dir,
            trainer,
            &LoopState {
                format: checkpoint::CHECKPOINT_FORMAT,
                epoch: e.metrics.epoch,
                step: trainer.step,
                plateau: trainer.plateau.clone(),
            },
        )
    }
}

/// The divergence guard ([`crate::guard`]) as a callback: its error stops training.
pub struct DivergenceGuard {
    config: GuardConfig,
    loss_bound: Option<f64>,
}

impl DivergenceGuard {
    /// A guard with the `[train.guard]` settings `config`, for a loss whose per-sample
    /// maximum is `loss_bound` (`Loss::max_value`; `None` when unbounded).
    pub fn new(config: GuardConfig, loss_bound: Option<f64>) -> Self {
        Self { config, loss_bound }
    }
}

impl Callback for DivergenceGuard {
    fn name(&self) -> &str {
        "divergence guard"
    }

    fn on_epoch_end(&mut self, _trainer: &Trainer, e: &EpochEnd<'_>) -> Result<()> {
        crate::guard::check(&self.config, e.history, e.classes, self.loss_bound)
    }
}
