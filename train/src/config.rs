//! Run configuration: one TOML file per experiment, overridable with `--set key.path=value`;
//! the effective config is written next to the results.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::{path::Path, sync::Arc};
use supermask_core::{
    fused::KernelConfig,
    optim::{OptimizerConfig, Schedule, Warmup},
    registry, Loss, MaskingConfig, ModelSpec, Result,
};
use supermask_datasets::dataset_names;

/// The built-in default config: the paper's Table 1 ELUS signed-Supermask FCN on MNIST.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/paper/table1-fcn-signed-elus.toml");
/// Name of [`DEFAULT_CONFIG`] (used for the default output directory).
pub const DEFAULT_CONFIG_NAME: &str = "table1-fcn-signed-elus";

fn default_batch() -> usize {
    128
}
fn default_true() -> bool {
    true
}

/// `[data]`: which dataset and how it is batched.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist`, `fashion-mnist`, `cifar10`, `cifar100`, `files` (the user's own images or
    /// arrays under the data root, see `supermask_datasets::files`) or a plugin's name.
    pub dataset: String,
    /// Per-sample shape `[channels, height, width]` of a dataset whose files decide it
    /// (`files`): the model's input shape, checked against every image loaded. Built-in
    /// datasets know theirs; giving another is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// Training batch size (the paper: 128).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Evaluation batch size.
    #[serde(default = "default_batch")]
    pub test_batch_size: usize,
    /// Reshuffle the training set every epoch (the authors' code did not; REPRODUCTION-NOTES).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Training augmentation: pad 4, random crop, horizontal flip (the ResNet presets).
    #[serde(default)]
    pub augment: bool,
    /// Train on a seeded random subset of this many training images (quick studies); the
    /// test set stays whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_subset: Option<usize>,
    /// Seed of the `train_subset` draw, separate from the run seed so that every seed of a
    /// sweep trains on the same images.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subset_seed: u64,
    /// Hold out this many seeded training images as a validation set, evaluated after every
    /// epoch (`val_loss`, `val_acc`); they are drawn from the whole training split before
    /// `train_subset`, so the validation set is the same whatever the subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
    /// Seed of the validation draw (separate from the run seed, as `subset_seed`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub validation_seed: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `[train]`: length of the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of epochs.
    pub epochs: usize,
    /// `[train.kernels]`: fused CPU kernels (default) or the reference path.
    #[serde(default)]
    pub kernels: KernelConfig,
    /// `[train.guard]`: stop a diverging run early.
    #[serde(default)]
    pub guard: GuardConfig,
    /// Momentum of the batch-norm running averages, Keras' convention (`running = m *
    /// running + (1 - m) * batch`): 0.99, Keras' default and the authors' code. It changes
    /// no training step, only the statistics evaluation uses: after `n` steps a share
    /// `m^n` of them is still the initial (0, 1), 0.45 after 79 steps at 0.99, so runs of a
    /// few hundred steps evaluate better at 0.9 (PyTorch's default, its `momentum=0.1`).
    #[serde(
        default = "default_bn_momentum",
        skip_serializing_if = "is_default_bn_momentum"
    )]
    pub bn_momentum: f64,
}

fn default_bn_momentum() -> f64 {
    supermask_core::ops::BN_MOMENTUM
}
fn is_default_bn_momentum(m: &f64) -> bool {
    *m == default_bn_momentum()
}

fn default_max_train_loss() -> f64 {
    100.0
}
fn default_chance_epochs() -> usize {
    3
}
fn default_saturation_share() -> f64 {
    0.5
}
fn default_saturated_epochs() -> usize {
    2
}

/// The divergence guard (`[train.guard]`): after every epoch, a run stops with an error when
/// its mean training loss exceeds `max_train_loss`, or when its test accuracy has stayed at
/// chance level (below 1.5 / classes) for `chance_epochs` epochs in a row. The epoch that
/// tripped it is saved (metrics and checkpoint) first, so nothing is lost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// `false` switches the guard off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Largest mean training loss of an epoch that counts as healthy. Chance level is
    /// `ln(classes)` (2.3 for 10 classes); the diverged first recipes reached 5,710 (Conv4) and
    /// 4.5e12 (ResNet20). The default 100 leaves room for a healthy start: the Table 1 FCN's
    /// first steps have loss 10.7, so a short epoch averages above 10. A net saturated in the
    /// clipped loss sits at 11-16 (it cannot exceed 16.1); catch that with a bound of about 10
    /// on runs of full epochs.
    #[serde(default = "default_max_train_loss")]
    pub max_train_loss: f64,
    /// Epochs in a row at chance-level test accuracy that stop the run (0: never).
    #[serde(default = "default_chance_epochs")]
    pub chance_epochs: usize,
    /// For a bounded loss (one whose `max_value` is known: the clipped cross-entropy's
    /// `-ln eps` = 16.1), the share of that bound above which an epoch's mean training loss
    /// counts as saturated. Saturated nets measured 11.6-13.0 (0.72-0.81 of 16.1), healthy
    /// presets' first epochs 0.74-5.54 (at most 0.34); the default 0.5 lies between.
    #[serde(default = "default_saturation_share")]
    pub saturation_share: f64,
    /// Epochs in a row with a saturated training loss that stop the run (0: never). Two, so
    /// that a short first epoch whose early steps average high does not stop a healthy run.
    #[serde(default = "default_saturated_epochs")]
    pub saturated_epochs: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_train_loss: default_max_train_loss(),
            chance_epochs: default_chance_epochs(),
            saturation_share: default_saturation_share(),
            saturated_epochs: default_saturated_epochs(),
        }
    }
}

/// A whole experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run seed: weights, scores, data order and stochastic masks all derive from it.
    #[serde(default)]
    pub seed: u64,
    /// The architecture.
    #[serde(deserialize_with = "registry::deserialize_model")]
    pub model: Arc<dyn ModelSpec>,
    /// Masked (with its plugins) or dense.
    pub masking: MaskingConfig,
    /// Data.
    pub data: DataConfig,
    /// Training length.
    pub train: TrainConfig,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Learning-rate warm-up over the first steps (`[warmup]`; off by default).
    #[serde(default, skip_serializing_if = "Warmup::is_off")]
    pub warmup: Warmup,
    /// The training loss (`[loss] type = "..."`; default `cross-entropy` on the logits).
    #[serde(
        default = "default_loss",
        deserialize_with = "registry::deserialize_loss"
    )]
    pub loss: Arc<dyn Loss>,
}

fn default_loss() -> Arc<dyn Loss> {
    registry::loss_from_table(toml::from_str("type = \"cross-entropy\"").expect("valid TOML"))
        .expect("the cross-entropy loss is registered (supermask_plugins::link)")
}

/// Applies `key.path=value` to a TOML document. The value is parsed as TOML (number, bool,
/// array, inline table) and taken as a string if that fails.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let (path, raw) = assignment
        .split_once('=')
        .with_context(|| format!("--set {assignment}: expected key.path=value"))?;
    let path = path.trim();
    anyhow::ensure!(!path.is_empty(), "--set {assignment}: empty key");
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let keys: Vec<&str> = path.split('.').collect();
    let mut table = doc;
    for k in &keys[..keys.len() - 1] {
        let entry = table
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .with_context(|| format!("--set {assignment}: `{k}` is not a table"))?;
    }
    table.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

impl RunConfig {
    /// Parses TOML text, applies overrides and validates.
    pub fn from_toml(text: &str, overrides: &[String], origin: &str) -> Result<Self> {
        let mut doc: toml::Table =
            toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let cfg: RunConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim()))?;
        cfg.validate()
            .with_context(|| format!("{origin}: invalid config"))?;
        Ok(cfg)
    }

    /// Reads a config file (or the built-in default when `path` is `None`).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                Self::from_toml(&text, overrides, &p.display().to_string())
            }
            None => Self::from_toml(DEFAULT_CONFIG, overrides, "built-in default config"),
        }
    }

    /// Checks every value that can be checked before training.
    pub fn validate(&self) -> Result<()> {
        self.masking.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.warmup.validate()?;
        anyhow::ensure!(
            dataset_names().contains(&self.data.dataset.as_str()),
            "data.dataset: unknown dataset `{}`; known datasets: {}",
            self.data.dataset,
            dataset_names().join(", ")
        );
        self.input_shape()?;
        anyhow::ensure!(self.data.batch_size > 0, "data.batch_size must be > 0");
        anyhow::ensure!(
            self.data.validation != Some(0),
            "data.validation must be > 0 (leave it out for no validation set)"
        );
        anyhow::ensure!(
            self.data.test_batch_size > 0,
            "data.test_batch_size must be > 0"
        );
        anyhow::ensure!(self.train.epochs > 0, "train.epochs must be > 0");
        if let Some(n) = self.data.train_subset {
            anyhow::ensure!(n > 0, "data.train_subset must be > 0");
        }
        self.loss.validate().context("loss")?;
        anyhow::ensure!(
            (0.0..1.0).contains(&self.train.bn_momentum),
            "train.bn_momentum must be in [0, 1), got {}",
            self.train.bn_momentum
        );
        let g = &self.train.guard;
        anyhow::ensure!(
            g.max_train_loss.is_finite() && g.max_train_loss > 0.0,
            "train.guard.max_train_loss must be a positive number, got {}",
            g.max_train_loss
        );
        anyhow::ensure!(
            g.saturation_share > 0.0 && g.saturation_share <= 1.0,
            "train.guard.saturation_share must be in (0, 1], got {}",
            g.saturation_share
        );
        self.train.kernels.validate()?;
        Ok(())
    }

    /// Per-sample input shape of the config's dataset, e.g. `[1, 28, 28]`: the shape its
    /// model is built for.
    pub fn input_shape(&self) -> Result<Vec<usize>> {
        let ds = &self.data.dataset;
        match (supermask_datasets::sample_shape(ds)?, &self.data.shape) {
            (Some(fixed), None) => Ok(fixed),
            (Some(fixed), Some(given)) => {
                anyhow::ensure!(
                    *given == fixed,
                    "data.shape = {given:?}, but {ds} samples are {fixed:?} (leave data.shape \
                     out for a built-in dataset)"
                );
                Ok(fixed)
            }
            (None, Some(given)) => {
                anyhow::ensure!(
                    given.len() == 3 && given.iter().all(|&d| d > 0),
                    "data.shape = {given:?}: give [channels, height, width], each > 0"
                );
                let values = given.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                anyhow::ensure!(
                    values.is_some_and(|v| v <= supermask_core::arch::MAX_VALUES_PER_SAMPLE),
                    "data.shape = {given:?}: more than {} values a sample",
                    supermask_core::arch::MAX_VALUES_PER_SAMPLE
                );
                Ok(given.clone())
            }
            (None, None) => anyhow::bail!(
                "data.shape: dataset {ds} reads the sample shape from the config; give it as \
                 [channels, height, width], e.g. data.shape = [1, 28, 28]"
            ),
        }
    }

    /// The effective config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serializing the effective config")
    }
}
