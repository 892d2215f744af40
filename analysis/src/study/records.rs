//! Finished runs and their grouping: runs that share every config value but the seed form a
//! [`Group`], named after the sweep's label or the run directory without its seed.

use anyhow::Context;
use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};
use supermask_core::{Layer, Result};
use supermask_train::{
    config::RunConfig,
    metrics::EpochMetrics,
    rundir::{RunDir, CONFIG_FILE, METRICS_FILE},
    sweep::{Plan, PLAN_FILE},
};

use crate::{masks::LayerMask, stats::Band};

/// A finished run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// Its directory.
    pub dir: PathBuf,
    /// Seed.
    pub seed: u64,
    /// The effective config.
    pub config: RunConfig,
    /// Every epoch's metrics.
    pub metrics: Vec<EpochMetrics>,
    /// Index into `metrics` of the epoch the tables report ([`EpochRule`]; the last one
    /// unless [`choose_epochs`] picked another).
    pub chosen: usize,
}

/// Which epoch of each run the tables report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EpochRule {
    /// The last epoch (the paper's rule).
    #[default]
    Last,
    /// The epoch of the highest validation accuracy (the earliest of equals); every run must
    /// hold out a validation set (`data.validation`).
    BestValidation,
}

impl std::str::FromStr for EpochRule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Self::Last),
            "best-validation" => Ok(Self::BestValidation),
            _ => anyhow::bail!("unknown epoch rule `{s}`; use last or best-validation"),
        }
    }
}

impl EpochRule {
    /// One sentence naming the rule, for the tables' captions.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Last => "the last epoch of each run (the paper's rule)",
            Self::BestValidation => {
                "the epoch of each run with the highest validation accuracy (data.validation \
                 images held out of the training set; the earliest of equals); masks are the \
                 last epoch's"
            }
        }
    }
}

/// Sets every run's [`RunRecord::chosen`] epoch by `rule`; fails, naming the run, when the rule
/// needs validation metrics a run does not have.
pub fn choose_epochs(groups: &mut [Group], rule: EpochRule) -> Result<()> {
    for r in groups.iter_mut().flat_map(|g| g.runs.iter_mut()) {
        r.chosen = match rule {
            EpochRule::Last => r.metrics.len() - 1,
            EpochRule::BestValidation => {
                let mut best: Option<(usize, f64)> = None;
                for (i, m) in r.metrics.iter().enumerate() {
                    let acc = m.val_acc.with_context(|| {
                        format!(
                            "{}: epoch {} has no validation accuracy; --epoch best-validation \
                             needs runs trained with data.validation",
                            r.dir.display(),
                            m.epoch
                        )
                    })?;
                    if best.is_none_or(|(_, b)| acc > b) {
                        best = Some((i, acc));
                    }
                }
                best.map_or(0, |(i, _)| i)
            }
        };
    }
    Ok(())
}

impl RunRecord {
    /// The metrics of the epoch the tables report (the last unless [`choose_epochs`] picked
    /// another).
    pub fn chosen(&self) -> &EpochMetrics {
        &self.metrics[self.chosen]
    }

    /// Mean training seconds per epoch.
    pub fn seconds_per_epoch(&self) -> f64 {
        self.metrics.iter().map(|m| m.seconds).sum::<f64>() / self.metrics.len() as f64
    }

    /// The final masks `g(M)` of the masked layers, from the checkpoint.
    pub fn masks(&self) -> Result<Vec<LayerMask>> {
        let run = RunDir {
            dir: self.dir.clone(),
            config: self.config.clone(),
            metrics: Vec::new(),
        };
        let trainer = run.trained_for_config(&Device::Cpu)?;
        let mut out = Vec::new();
        for layer in trainer.model().layers() {
            if let Layer::Masked(l) = layer {
                let values = l
                    .eval_mask()?
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|v| v as i8)
                    .collect();
                out.push(LayerMask {
                    name: layer.name().to_string(),
                    shape: layer.spec().shape.clone(),
                    values,
                });
            }
        }
        Ok(out)
    }
}

/// Runs that share every config value but the seed.
#[derive(Clone, Debug)]
pub struct Group {
    /// Readable name: the sweep's label, else the run directory's name without the seed.
    pub label: String,
    /// Hash of the config without the seed.
    pub key: String,
    /// The sweep's overrides of the preset (`key=value`; empty for unmodified presets and for
    /// runs made outside a sweep).
    pub overrides: Vec<String>,
    /// The runs, by seed.
    pub runs: Vec<RunRecord>,
}

impl Group {
    /// The shared config (of the first run).
    pub fn config(&self) -> &RunConfig {
        &self.runs[0].config
    }

    /// True for signed/binary Supermask groups, false for dense baselines.
    pub fn masked(&self) -> bool {
        !matches!(
            self.config().masking,
            supermask_core::MaskingConfig::Dense { .. }
        )
    }

    /// The model table as TOML (`type = "fcn"`, plus any width or depth options).
    pub fn model(&self) -> String {
        toml::to_string(&self.config().model).unwrap_or_default()
    }

    /// The model's registry name (`fcn`, `conv4`, ...).
    pub fn model_type(&self) -> &'static str {
        self.config().model.typetag_name()
    }

    /// The dataset.
    pub fn dataset(&self) -> &str {
        &self.config().data.dataset
    }

    /// The preset file name the group came from, when its label starts with one.
    pub fn preset(&self) -> &str {
        self.label.split('_').next().unwrap_or(&self.label)
    }

    /// The band of one metric over the group's runs; all NaN when a value is not finite (it
    /// shows as NaN in the tables instead of stopping the report).
    pub fn band(&self, f: impl Fn(&RunRecord) -> f64) -> Band {
        let v: Vec<f64> = self.runs.iter().map(f).collect();
        Band::of(&v).unwrap_or(Band {
            n: v.len(),
            mean: f64::NAN,
            q05: f64::NAN,
            q95: f64::NAN,
        })
    }
}

fn group_key(cfg: &RunConfig) -> Result<String> {
    let mut c = cfg.clone();
    c.seed = 0;
    let d = Sha256::digest(c.to_toml()?.as_bytes());
    Ok(d[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// `name` without a trailing `-s<seed>-<hash>` (sweep runs) or `-seed<seed>`.
fn strip_seed(name: &str, seed: u64) -> String {
    if let Some((head, hash)) = name.rsplit_once('-') {
        if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
            if let Some(h) = head.strip_suffix(&format!("-s{seed}")) {
                return h.to_string();
            }
        }
    }
    name.strip_suffix(&format!("-seed{seed}"))
        .unwrap_or(name)
        .to_string()
}

/// Finished runs under `dir` (the directory itself, its subdirectories, and theirs), grouped by
/// config without the seed, in the sweep's order when `dir` holds a `sweep.json`, else by
/// label. Also returns the run directories found unfinished.
pub fn load_groups(dir: &Path) -> Result<(Vec<Group>, Vec<PathBuf>)> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let subdirs = |p: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        Ok(v)
    };
    // The directory itself, its subdirectories and theirs.
    let level1 = subdirs(dir)?;
    let mut candidates = vec![dir.to_path_buf()];
    for d in &level1 {
        candidates.extend(subdirs(d)?);
    }
    candidates.extend(level1);
    let plan: Option<Plan> = std::fs::read_to_string(dir.join(PLAN_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let order = |name: &str| -> usize {
        plan.as_ref()
            .and_then(|p| p.runs.iter().position(|r| r.dir == name))
            .unwrap_or(usize::MAX)
    };
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut unfinished = Vec::new();
    // Each group sorts by its earliest run in the sweep's plan.
    let mut firsts: BTreeMap<String, usize> = BTreeMap::new();
    for d in candidates {
        if !d.join(CONFIG_FILE).exists() || !d.join(METRICS_FILE).exists() {
            continue;
        }
        let run = RunDir::open(&d)?;
        if !run.is_finished() {
            unfinished.push(d);
            continue;
        }
        let RunDir {
            config, metrics, ..
        } = run;
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let planned = plan
            .as_ref()
            .and_then(|p| p.runs.iter().find(|r| r.dir == name));
        let label = planned
            .map(|r| r.label.clone())
            .unwrap_or_else(|| strip_seed(&name, config.seed));
        let overrides = planned.map(|r| r.overrides.clone()).unwrap_or_default();
        let key = group_key(&config)?;
        let pos = order(&name);
        let first = firsts.entry(key.clone()).or_insert(pos);
        *first = (*first).min(pos);
        groups
            .entry(key.clone())
            .or_insert_with(|| Group {
                label,
                key,
                overrides,
                runs: Vec::new(),
            })
            .runs
            .push(RunRecord {
                dir: d,
                seed: config.seed,
                config,
                chosen: metrics.len().saturating_sub(1),
                metrics,
            });
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    for g in &mut out {
        g.runs.sort_by_key(|r| r.seed);
    }
    out.sort_by(|a, b| (firsts[&a.key], &a.label).cmp(&(firsts[&b.key], &b.label)));
    // Two groups with the same label (e.g. hand-named runs of different configs) get their
    // hash appended so tables stay unambiguous.
    let labels: Vec<String> = out.iter().map(|g| g.label.clone()).collect();
    for g in &mut out {
        if labels.iter().filter(|l| **l == g.label).count() > 1 {
            g.label = format!("{}-{}", g.label, &g.key[..8]);
        }
    }
    Ok((out, unfinished))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_lose_their_seed_and_hash() {
        assert_eq!(
            strip_seed("table1-fcn-signed-elus-s3-0123456789abcdef", 3),
            "table1-fcn-signed-elus"
        );
        assert_eq!(strip_seed("elus-seed2", 2), "elus");
        // Another seed or a short hash is part of the name.
        assert_eq!(
            strip_seed("x-s3-0123456789abcdef", 4),
            "x-s3-0123456789abcdef"
        );
        assert_eq!(strip_seed("x-s3-0123", 3), "x-s3-0123");
    }
}
