//! `supermask aggregate` and `supermask report`: finished runs grouped by their config without
//! the seed, statistics per group (the layout of Tables 1, 2, 12), Welch's t-tests, the paper's
//! size metric, mask analyses and figures, and a markdown report beside the paper's numbers.

use anyhow::Context;
use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};
use supermask_analysis::{
    masks::{self, LayerMask},
    plots::{self, BandSeries, Bar, Matrix, SharesBar},
    size,
    stats::{welch, Band, Welch},
};
use supermask_core::{fsio::write_atomic, Layer, Result};
use supermask_train::{
    config::RunConfig,
    metrics::EpochMetrics,
    rundir::{RunDir, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE},
    sweep::{Plan, PLAN_FILE},
};

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
}

impl RunRecord {
    /// The last epoch's metrics.
    pub fn last(&self) -> &EpochMetrics {
        self.metrics.last().expect("finished runs have metrics")
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

/// Per-group statistics of final metrics and sizes.
#[derive(Clone, Debug)]
pub struct GroupStats {
    /// Group label.
    pub label: String,
    /// Runs.
    pub n: usize,
    /// Final test accuracy (%).
    pub test_acc: Band,
    /// Final test loss.
    pub test_loss: Band,
    /// Final remaining weights (%).
    pub remaining: Band,
    /// Training seconds per epoch.
    pub seconds: Band,
    /// Dense float32 bytes of the masked layers' weights (per run).
    pub dense_bytes: usize,
    /// The paper's CSR bytes of `W * g(M)` (mean over runs); `None` for dense baselines.
    pub csr_bytes: Option<f64>,
    /// `1 - CSR / dense` (mean over runs).
    pub compression: Option<Band>,
    /// The matching dense baseline's label and this group's extra training time per epoch
    /// relative to it.
    pub overhead: Option<(String, f64)>,
}

fn flat_config(cfg: &RunConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(cfg) {
        walk("", &v, &mut out);
    }
    out.remove("seed");
    out
}

/// The dense group with the same model and dataset whose config differs in the fewest values.
fn matching_baseline<'a>(g: &Group, groups: &'a [Group]) -> Option<&'a Group> {
    let mine = flat_config(g.config());
    groups
        .iter()
        .filter(|b| !b.masked() && b.model() == g.model() && b.dataset() == g.dataset())
        .filter(|b| b.key != g.key)
        .min_by_key(|b| {
            let other = flat_config(b.config());
            mine.iter()
                .filter(|(k, v)| other.get(*k) != Some(*v))
                .count()
                + other.keys().filter(|k| !mine.contains_key(*k)).count()
        })
}

/// Computes every group's statistics; `masks[i][r]` are the masks of group `i`'s run `r`.
pub fn group_stats(groups: &[Group], masks: &[Vec<Vec<LayerMask>>]) -> Vec<GroupStats> {
    let mut out: Vec<GroupStats> = groups
        .iter()
        .zip(masks)
        .map(|(g, runs)| {
            let dense_bytes: usize = runs
                .first()
                .map(|layers| {
                    layers
                        .iter()
                        .map(|l| size::dense_f32_bytes(l.values.len()))
                        .sum()
                })
                .unwrap_or(0);
            let csr: Vec<f64> = runs
                .iter()
                .map(|layers| {
                    layers
                        .iter()
                        .map(|l| size::csr_bytes(l.matrix_dims().0, l.nnz()) as f64)
                        .sum::<f64>()
                })
                .collect();
            let (csr_bytes, compression) = if g.masked() && !csr.is_empty() && dense_bytes > 0 {
                let rates: Vec<f64> = csr
                    .iter()
                    .map(|&c| size::compression_rate(dense_bytes, c as usize))
                    .collect();
                (
                    Some(csr.iter().sum::<f64>() / csr.len() as f64),
                    Band::of(&rates).map(|b| b.scaled(100.0)),
                )
            } else {
                (None, None)
            };
            GroupStats {
                label: g.label.clone(),
                n: g.runs.len(),
                test_acc: g.band(|r| r.last().test_acc).scaled(100.0),
                test_loss: g.band(|r| r.last().test_loss),
                remaining: g.band(|r| r.last().remaining).scaled(100.0),
                seconds: g.band(RunRecord::seconds_per_epoch),
                dense_bytes,
                csr_bytes,
                compression,
                overhead: None,
            }
        })
        .collect();
    for (i, g) in groups.iter().enumerate() {
        if !g.masked() {
            continue;
        }
        if let Some(b) = matching_baseline(g, groups) {
            let bi = groups.iter().position(|x| x.key == b.key).expect("present");
            out[i].overhead = Some((
                b.label.clone(),
                out[i].seconds.mean / out[bi].seconds.mean - 1.0,
            ));
        }
    }
    out
}

fn band_md(b: &Band, digits: usize) -> String {
    format!("{:.d$} [{:.d$}, {:.d$}]", b.mean, b.q05, b.q95, d = digits)
}

/// The CSV of [`group_stats`]: one row per group.
pub fn stats_csv(stats: &[GroupStats]) -> String {
    let mut s = String::from(
        "group,n,test_acc_mean,test_acc_q05,test_acc_q95,test_loss_mean,test_loss_q05,test_loss_q95,\
remaining_mean,remaining_q05,remaining_q95,s_per_epoch_mean,s_per_epoch_q05,s_per_epoch_q95,\
dense_f32_bytes,csr_bytes_mean,compression_mean,baseline,time_overhead\n",
    );
    for g in stats {
        let b = |b: &Band| format!("{},{},{}", b.mean, b.q05, b.q95);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}",
            g.label,
            g.n,
            b(&g.test_acc),
            b(&g.test_loss),
            b(&g.remaining),
            b(&g.seconds),
            g.dense_bytes,
            g.csr_bytes.map(|c| format!("{c:.1}")).unwrap_or_default(),
            g.compression
                .map(|c| format!("{:.4}", c.mean))
                .unwrap_or_default(),
            g.overhead.as_ref().map(|o| o.0.clone()).unwrap_or_default(),
            g.overhead
                .as_ref()
                .map(|o| format!("{:.4}", o.1))
                .unwrap_or_default(),
        );
    }
    s
}

/// The markdown table of [`group_stats`] (Tables 1, 2, 12 layout) and the size table
/// (Tables 3, 13 layout).
pub fn stats_md(stats: &[GroupStats]) -> String {
    let mut s = String::from(
        "| group | n | test acc % | test loss | remaining % | s / epoch |\n|---|---|---|---|---|---|\n",
    );
    for g in stats {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            g.label,
            g.n,
            band_md(&g.test_acc, 2),
            band_md(&g.test_loss, 4),
            band_md(&g.remaining, 2),
            band_md(&g.seconds, 2)
        );
    }
    s.push_str(
        "\nSize of the masked layers (the paper's metric: dense float32 vs scipy CSR of `W * g(M)`, \
         mean over runs) and training time vs the matching dense baseline:\n\n\
         | group | dense f32 bytes | CSR bytes | compression % | baseline | extra time / epoch |\n\
         |---|---|---|---|---|---|\n",
    );
    for g in stats.iter().filter(|g| g.csr_bytes.is_some()) {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} |",
            g.label,
            g.dense_bytes,
            g.csr_bytes.unwrap_or(f64::NAN),
            g.compression.map(|c| band_md(&c, 2)).unwrap_or_default(),
            g.overhead.as_ref().map(|o| o.0.as_str()).unwrap_or("-"),
            g.overhead
                .as_ref()
                .map(|o| format!("{:+.1}%", 100.0 * o.1))
                .unwrap_or_else(|| "-".into()),
        );
    }
    s
}

/// A Welch comparison of two groups on one metric.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// First group.
    pub a: String,
    /// Second group.
    pub b: String,
    /// The metric compared.
    pub metric: &'static str,
    /// `mean(a) - mean(b)`.
    pub diff: f64,
    /// The test; `None` when undefined (fewer than 2 runs, no variance).
    pub test: Option<Welch>,
}

/// Significance level marked in the tables.
pub const ALPHA: f64 = 0.01;

/// Welch's t-tests of final test accuracy (and of remaining weights when both groups are
/// masked) between the given pairs of groups (by label), or, with no pairs, between every two
/// groups of the same model and dataset.
pub fn comparisons(groups: &[Group], pairs: &[(String, String)]) -> Result<Vec<Comparison>> {
    let find = |label: &str| -> Result<&Group> {
        let hits: Vec<&Group> = groups
            .iter()
            .filter(|g| g.label == label || g.label.contains(label))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => anyhow::bail!(
                "--compare: no group matches `{label}`; groups: {}",
                groups
                    .iter()
                    .map(|g| g.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            many => {
                if let Some(exact) = many.iter().find(|g| g.label == label) {
                    Ok(exact)
                } else {
                    anyhow::bail!(
                        "--compare: `{label}` matches several groups: {}",
                        many.iter()
                            .map(|g| g.label.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            }
        }
    };
    let mut chosen: Vec<(&Group, &Group)> = Vec::new();
    if pairs.is_empty() {
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                if a.model() == b.model() && a.dataset() == b.dataset() {
                    chosen.push((a, b));
                }
            }
        }
    } else {
        for (a, b) in pairs {
            chosen.push((find(a)?, find(b)?));
        }
    }
    let mut out = Vec::new();
    for (a, b) in chosen {
        for (metric, f) in [
            (
                "test acc %",
                (|r: &RunRecord| 100.0 * r.last().test_acc) as fn(&RunRecord) -> f64,
            ),
            ("remaining %", |r: &RunRecord| 100.0 * r.last().remaining),
        ] {
            if metric == "remaining %" && !(a.masked() && b.masked()) {
                continue; // a dense baseline keeps 100%: nothing to test
            }
            let va: Vec<f64> = a.runs.iter().map(f).collect();
            let vb: Vec<f64> = b.runs.iter().map(f).collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            out.push(Comparison {
                a: a.label.clone(),
                b: b.label.clone(),
                metric,
                diff: mean(&va) - mean(&vb),
                test: welch(&va, &vb),
            });
        }
    }
    Ok(out)
}

/// The markdown table of comparisons; `p < 0.01` marked with `**`.
pub fn comparisons_md(c: &[Comparison]) -> String {
    let mut s = String::from(
        "| A | B | metric | mean A - B | t | df | p (Welch, two-sided) |\n|---|---|---|---|---|---|---|\n",
    );
    for x in c {
        let (t, df, p) = match x.test {
            Some(w) => (
                format!("{:.2}", w.t),
                format!("{:.1}", w.df),
                if w.p < ALPHA {
                    format!("**{:.2e}** (p < {ALPHA})", w.p)
                } else {
                    format!("{:.3}", w.p)
                },
            ),
            None => (
                "-".into(),
                "-".into(),
                "undefined (n < 2 or no variance)".into(),
            ),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:+.3} | {t} | {df} | {p} |",
            x.a, x.b, x.metric, x.diff
        );
    }
    s
}

/// Loads every run's masks (`[group][run][layer]`).
pub fn load_masks(groups: &[Group]) -> Result<Vec<Vec<Vec<LayerMask>>>> {
    groups
        .iter()
        .map(|g| {
            g.runs
                .iter()
                .map(|r| {
                    r.masks()
                        .with_context(|| format!("masks of {}", r.dir.display()))
                })
                .collect()
        })
        .collect()
}

/// Everything `aggregate` and `report` compute from a directory of runs.
pub struct Study {
    /// Finished runs by group.
    pub groups: Vec<Group>,
    /// Run directories left out as unfinished.
    pub unfinished: Vec<PathBuf>,
    /// Final masks, `[group][run][layer]`.
    pub masks: Vec<Vec<Vec<LayerMask>>>,
    /// Statistics per group.
    pub stats: Vec<GroupStats>,
    /// Welch's tests.
    pub cmp: Vec<Comparison>,
}

impl Study {
    /// Loads the finished runs under `dir` and computes their statistics and `pairs`' tests.
    pub fn load(dir: &Path, pairs: &[(String, String)]) -> Result<Self> {
        let (groups, unfinished) = load_groups(dir)?;
        anyhow::ensure!(
            !groups.is_empty(),
            "{} holds no finished run (a directory with {CONFIG_FILE}, {METRICS_FILE} and {SUMMARY_FILE})",
            dir.display()
        );
        let masks = load_masks(&groups)?;
        let stats = group_stats(&groups, &masks);
        let cmp = comparisons(&groups, pairs)?;
        Ok(Self {
            groups,
            unfinished,
            masks,
            stats,
            cmp,
        })
    }
}

/// Writes `aggregate.csv` and `aggregate.md` into `out`; returns the markdown.
pub fn aggregate(dir: &Path, out: &Path, pairs: &[(String, String)]) -> Result<String> {
    let Study {
        unfinished,
        stats,
        cmp,
        ..
    } = Study::load(dir, pairs)?;
    let mut md = format!("# Aggregate of {}\n\n", dir.display());
    if !unfinished.is_empty() {
        let _ = writeln!(
            md,
            "{} unfinished runs left out: {}\n",
            unfinished.len(),
            unfinished
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md.push_str("Final-epoch values, mean [5%, 95% quantile] over seeds.\n\n");
    md.push_str(&stats_md(&stats));
    md.push_str("\nWelch's t-tests:\n\n");
    md.push_str(&comparisons_md(&cmp));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("aggregate.csv"), stats_csv(&stats).as_bytes())?;
    write_atomic(&out.join("aggregate.md"), md.as_bytes())?;
    Ok(md)
}

/// A published number: mean with an optional 5-95% band.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    /// Mean.
    pub mean: f64,
    /// 5% and 95% quantiles, when the paper gives them.
    pub band: Option<(f64, f64)>,
}

const fn p(mean: f64, lo: f64, hi: f64) -> Published {
    Published {
        mean,
        band: Some((lo, hi)),
    }
}

const fn m(mean: f64) -> Published {
    Published { mean, band: None }
}

/// One row of the paper's results, keyed by preset and dataset.
#[derive(Clone, Copy, Debug)]
pub struct PaperRow {
    /// Preset file name (configs/paper/).
    pub preset: &'static str,
    /// Dataset.
    pub dataset: &'static str,
    /// Where in the paper.
    pub source: &'static str,
    /// Test accuracy (%).
    pub test_acc: Published,
    /// Remaining weights (%).
    pub remaining: Published,
    /// Training seconds per epoch on the authors' GPU.
    pub seconds: Option<f64>,
}

/// The paper's numbers for the presets in configs/paper/ (Table 1, Figure 3's text, Table 2).
pub const PAPER: &[PaperRow] = &[
    PaperRow {
        preset: "table1-fcn-baseline-he",
        dataset: "mnist",
        source: "Table 1",
        test_acc: p(97.40, 97.3, 97.5),
        remaining: m(100.0),
        seconds: Some(1.23),
    },
    PaperRow {
        preset: "table1-fcn-baseline-elu",
        dataset: "mnist",
        source: "Table 1",
        test_acc: p(97.42, 97.3, 97.5),
        remaining: m(100.0),
        seconds: Some(1.21),
    },
    PaperRow {
        preset: "table1-fcn-baseline-xavier",
        dataset: "mnist",
        source: "Table 1",
        test_acc: p(97.43, 97.4, 97.5),
        remaining: m(100.0),
        seconds: Some(1.21),
    },
    PaperRow {
        preset: "table1-fcn-signed-he",
        dataset: "mnist",
        source: "Table 1",
        test_acc: p(97.12, 97.0, 97.3),
        remaining: p(4.93, 4.9, 5.0),
        seconds: Some(1.36),
    },
    PaperRow {
        preset: "table1-fcn-signed-elus",
        dataset: "mnist",
        source: "Table 1",
        test_acc: p(97.48, 97.3, 97.7),
        remaining: p(3.77, 3.7, 3.8),
        seconds: Some(1.27),
    },
    PaperRow {
        preset: "table1-fcn-signed-xavier",
        dataset: "mnist",
        source: "Table 1",
        test_acc: p(96.89, 96.8, 97.0),
        remaining: p(5.51, 5.5, 5.6),
        seconds: Some(1.32),
    },
    PaperRow {
        preset: "figure3-fcn-binary-elus",
        dataset: "mnist",
        source: "Figure 3 text",
        test_acc: m(97.03),
        remaining: m(4.04),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv2-baseline-he",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(68.79),
        remaining: m(100.0),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv2-signed-elus",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(68.37),
        remaining: m(0.60),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv4-baseline-he",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(74.50),
        remaining: m(100.0),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv4-signed-elus",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(77.40),
        remaining: m(2.91),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv6-baseline-he",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(75.91),
        remaining: m(100.0),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv6-signed-elus",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(79.17),
        remaining: m(2.36),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv8-baseline-he",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(72.24),
        remaining: m(100.0),
        seconds: None,
    },
    PaperRow {
        preset: "table2-conv8-signed-elus",
        dataset: "cifar10",
        source: "Table 2",
        test_acc: m(80.91),
        remaining: m(1.17),
        seconds: None,
    },
];

/// The paper's Figure 3 facts for the first FCN layer over 50 runs: (preset, input columns
/// masked in every run, share of weights pruned in every run in %).
pub const PAPER_FIG3: &[(&str, usize, f64)] = &[
    ("table1-fcn-signed-elus", 284, 54.11),
    ("figure3-fcn-binary-elus", 144, 43.63),
];

/// The paper's row for a group, when the group is an unmodified preset run on that dataset
/// (a sweep's `[set]` or `[grid]` values make it another experiment).
pub fn paper_row(g: &Group) -> Option<&'static PaperRow> {
    if !g.overrides.is_empty() || g.label.contains('_') {
        return None; // the sweep changed the preset
    }
    PAPER
        .iter()
        .find(|r| r.preset == g.preset() && r.dataset == g.dataset())
}

/// "ours vs theirs" cell: the paper's value and whether our mean lies outside its band.
fn versus(ours: &Band, theirs: &Published, digits: usize) -> (String, &'static str) {
    let text = match theirs.band {
        Some((lo, hi)) => format!("{:.d$} [{lo}, {hi}]", theirs.mean, d = digits),
        None => format!("{:.d$}", theirs.mean, d = digits),
    };
    let mark = match theirs.band {
        Some((lo, hi)) if ours.mean < lo || ours.mean > hi => "outside",
        Some(_) => "inside",
        None => "(no band)",
    };
    (text, mark)
}

/// Per-epoch band of one metric over a group's runs.
fn epoch_bands(g: &Group, f: impl Fn(&EpochMetrics) -> f64, label: &str) -> BandSeries {
    let epochs = g.runs.iter().map(|r| r.metrics.len()).min().unwrap_or(0);
    let mut s = BandSeries {
        label: label.to_string(),
        x: Vec::new(),
        mean: Vec::new(),
        lo: Vec::new(),
        hi: Vec::new(),
    };
    for e in 0..epochs {
        let v: Vec<f64> = g.runs.iter().map(|r| f(&r.metrics[e])).collect();
        if let Some(b) = Band::of(&v) {
            s.x.push((e + 1) as f64);
            s.mean.push(b.mean);
            s.lo.push(b.q05);
            s.hi.push(b.q95);
        }
    }
    s
}

/// What `report` draws and compares.
pub struct ReportOptions {
    /// Data root for Figure 1's input sample (skipped when the data cannot be read).
    pub data_dir: PathBuf,
    /// Pairs of groups to test (labels or unique substrings); none: every pair of groups of
    /// the same model and dataset.
    pub pairs: Vec<(String, String)>,
    /// Layer for the mask pattern plot (Figure 9); default: a conv net's first fully connected
    /// layer (the paper's choice), else the second masked layer.
    pub pattern_layer: Option<String>,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes the report markdown to `out` and its figures (PNG and SVG) to `figures/` beside it.
pub fn report(dir: &Path, out: &Path, opts: &ReportOptions) -> Result<()> {
    let Study {
        groups,
        unfinished,
        masks,
        stats,
        cmp,
    } = Study::load(dir, &opts.pairs)?;
    let base = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = out
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let fig_dir = base.join("figures");
    std::fs::create_dir_all(&fig_dir).with_context(|| format!("creating {}", fig_dir.display()))?;
    let fig = |name: &str| fig_dir.join(format!("{stem}-{}", slug(name)));
    let link = |name: &str, caption: &str| {
        format!(
            "![{caption}](figures/{stem}-{}.png)\n([SVG](figures/{stem}-{}.svg))\n",
            slug(name),
            slug(name)
        )
    };

    let mut md = String::new();
    let _ = writeln!(md, "# Report: {}\n", dir.display());
    let total: usize = groups.iter().map(|g| g.runs.len()).sum();
    let _ = writeln!(
        md,
        "{total} finished runs in {} groups (runs that differ only in the seed). Values are the final \
         epoch's, as mean [5%, 95% quantile] over seeds, the paper's layout; the paper ran 50 seeds \
         per setting, so its bands are tighter estimates than ours with few seeds.\n",
        groups.len()
    );
    if !unfinished.is_empty() {
        let _ = writeln!(
            md,
            "Left out, unfinished: {}.\n",
            unfinished
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // Ours vs the paper.
    let rows: Vec<(&Group, &GroupStats, &PaperRow)> = groups
        .iter()
        .zip(&stats)
        .filter_map(|(g, s)| paper_row(g).map(|r| (g, s, r)))
        .collect();
    if !rows.is_empty() {
        md.push_str(
            "## Ours vs the paper\n\nGroups are matched to the paper by preset and dataset (a \
             sweep that changes a preset with `[set]` or `[grid]` is another experiment and is \
             not compared; runs made outside a sweep are taken as their preset). \"outside\" \
             marks our mean outside the paper's 5-95% band.\n\n",
        );
        md.push_str("| group | n | test acc % (ours) | paper | | remaining % (ours) | paper | | s / epoch (ours, CPU) | paper (GPU) | source |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (g, s, r) in &rows {
            let (acc, acc_mark) = versus(&s.test_acc, &r.test_acc, 2);
            let (rem, rem_mark) = versus(&s.remaining, &r.remaining, 2);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {acc} | {acc_mark} | {} | {rem} | {} | {:.2} | {} | {} |",
                g.label,
                s.n,
                band_md(&s.test_acc, 2),
                band_md(&s.remaining, 2),
                if g.masked() { rem_mark } else { "" },
                s.seconds.mean,
                r.seconds
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into()),
                r.source
            );
        }
        md.push('\n');
    }

    md.push_str("## All groups\n\n");
    md.push_str(&stats_md(&stats));
    md.push_str("\n## Welch's t-tests\n\nTwo-sided, unequal variances; **bold** p < 0.01.\n\n");
    md.push_str(&comparisons_md(&cmp));

    // Curves over epochs, one chart per model and dataset.
    md.push_str("\n## Training curves (Figures 4-6)\n\n");
    let mut families: Vec<(String, String)> = Vec::new();
    for g in &groups {
        let f = (g.model_type().to_string(), g.dataset().to_string());
        if !families.contains(&f) {
            families.push(f);
        }
    }
    for (model, dataset) in &families {
        let fam: Vec<&Group> = groups
            .iter()
            .filter(|g| g.model_type() == model && g.dataset() == dataset)
            .collect();
        let acc: Vec<BandSeries> = fam
            .iter()
            .map(|g| epoch_bands(g, |m| 100.0 * m.test_acc, &g.label))
            .collect();
        let name = format!("{model}-{dataset}-test-acc");
        plots::band_chart(
            &fig(&name),
            &format!("{model} on {dataset}: test accuracy (mean, 5-95% band)"),
            "test accuracy %",
            &acc,
        )?;
        md.push_str(&link(&name, &format!("{model} {dataset} test accuracy")));
        let rem: Vec<BandSeries> = fam
            .iter()
            .filter(|g| g.masked())
            .map(|g| epoch_bands(g, |m| 100.0 * m.remaining, &g.label))
            .collect();
        if !rem.is_empty() {
            let name = format!("{model}-{dataset}-remaining");
            plots::band_chart(
                &fig(&name),
                &format!("{model} on {dataset}: remaining weights (mean, 5-95% band)"),
                "remaining weights %",
                &rem,
            )?;
            md.push('\n');
            md.push_str(&link(
                &name,
                &format!("{model} {dataset} remaining weights"),
            ));
        }
        md.push('\n');
    }

    // Mask analyses.
    let masked: Vec<usize> = (0..groups.len()).filter(|&i| groups[i].masked()).collect();
    if !masked.is_empty() {
        md.push_str("## Masks\n\n### Distribution per layer (Figures 2a, 7)\n\n");
        md.push_str("| group | layer | -1 % | 0 % | +1 % |\n|---|---|---|---|---|\n");
        let mut bars = Vec::new();
        for &i in &masked {
            let runs = &masks[i];
            for (li, layer) in runs[0].iter().enumerate() {
                let mut mean = [0.0; 3];
                for r in runs {
                    let s = masks::shares(&r[li].values);
                    for k in 0..3 {
                        mean[k] += s[k] / runs.len() as f64;
                    }
                }
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {:.2} | {:.2} |",
                    groups[i].label,
                    layer.name,
                    100.0 * mean[0],
                    100.0 * mean[1],
                    100.0 * mean[2]
                );
                bars.push(SharesBar {
                    label: format!("{} / {}", groups[i].label, layer.name),
                    shares: mean,
                });
            }
        }
        plots::shares_chart(
            &fig("mask-shares"),
            "Mask distribution per layer (mean over runs)",
            &bars,
        )?;
        md.push('\n');
        md.push_str(&link("mask-shares", "mask shares"));

        md.push_str("\n### Pairwise equality across runs (Figures 2b, 8)\n\nShare of positions where two runs' masks are equal (signed) and where both keep or both prune (absolute), mean [5%, 95%] over all pairs of runs.\n\n| group | layer | equal masks % | equal absolute masks % |\n|---|---|---|---|\n");
        let (mut eq_bars, mut abs_bars) = (Vec::new(), Vec::new());
        for &i in &masked {
            let runs = &masks[i];
            if runs.len() < 2 {
                continue;
            }
            for (li, layer) in runs[0].iter().enumerate() {
                let vals: Vec<&[i8]> = runs.iter().map(|r| r[li].values.as_slice()).collect();
                let eq = Band::of(&masks::pairwise_equality(&vals, false));
                let ab = Band::of(&masks::pairwise_equality(&vals, true));
                if let (Some(eq), Some(ab)) = (eq, ab) {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        groups[i].label,
                        layer.name,
                        band_md(&eq.scaled(100.0), 2),
                        band_md(&ab.scaled(100.0), 2)
                    );
                    eq_bars.push(Bar {
                        category: layer.name.clone(),
                        series: groups[i].label.clone(),
                        value: eq.mean,
                        interval: (eq.q05, eq.q95),
                    });
                    abs_bars.push(Bar {
                        category: layer.name.clone(),
                        series: groups[i].label.clone(),
                        value: ab.mean,
                        interval: (ab.q05, ab.q95),
                    });
                }
            }
        }
        if !eq_bars.is_empty() {
            plots::bar_chart(
                &fig("mask-equality"),
                "Pairwise equality of masks across runs",
                "equal positions",
                &eq_bars,
            )?;
            plots::bar_chart(
                &fig("mask-equality-abs"),
                "Pairwise equality of absolute masks across runs",
                "equal positions",
                &abs_bars,
            )?;
            md.push('\n');
            md.push_str(&link("mask-equality", "mask equality"));
            md.push('\n');
            md.push_str(&link("mask-equality-abs", "absolute mask equality"));
        }

        // First FCN layer: |mask| summed over runs (Figure 3).
        let fcn: Vec<usize> = masked
            .iter()
            .copied()
            .filter(|&i| groups[i].model_type() == "fcn")
            .collect();
        if !fcn.is_empty() {
            md.push_str("\n### First FCN layer over runs (Figure 3)\n\nSum of |mask| over the runs of each group; an input column (pixel) is *masked in every run* when all its weights are pruned in all runs. The paper counted over 50 runs, where a column is less likely to be pruned in all of them; \"column sum <= 2n\" is the paper's \"100 outliers over 50 runs\" scaled to n runs.\n\n| group | n | fc1 remaining % | weights pruned in every run % | columns masked in every run | columns with sum <= 2n | paper (50 runs): columns, pruned % |\n|---|---|---|---|---|---|---|\n");
            let facts = |i: usize| {
                let runs = &masks[i];
                let (rows, cols) = runs[0][0].matrix_dims();
                let vals: Vec<&[i8]> = runs.iter().map(|r| r[0].values.as_slice()).collect();
                let sum = masks::abs_sum(&vals);
                let n = runs.len() as u32;
                let rem = runs
                    .iter()
                    .map(|r| r[0].nnz() as f64 / r[0].values.len() as f64)
                    .sum::<f64>()
                    / runs.len() as f64;
                (
                    100.0 * rem,
                    100.0 * masks::always_pruned(&sum),
                    masks::quiet_columns(&sum, rows, cols, 0),
                    masks::quiet_columns(&sum, rows, cols, 2 * n),
                )
            };
            let paper_fig3 = |g: &Group| {
                paper_row(g)?;
                PAPER_FIG3.iter().find(|(p, _, _)| *p == g.preset())
            };
            for &i in &fcn {
                let (rem, pruned, cols0, cols2n) = facts(i);
                let _ = writeln!(
                    md,
                    "| {} | {} | {rem:.2} | {pruned:.2} | {cols0} | {cols2n} | {} |",
                    groups[i].label,
                    groups[i].runs.len(),
                    paper_fig3(&groups[i])
                        .map(|(_, c, p)| format!("{c}, {p}"))
                        .unwrap_or_else(|| "-".into())
                );
            }
            // Binary vs signed Supermask (Figure 3's comparison), per dataset.
            for &bi in fcn
                .iter()
                .filter(|&&i| groups[i].preset() == "figure3-fcn-binary-elus")
            {
                let Some(&si) = fcn.iter().find(|&&i| {
                    groups[i].preset() == "table1-fcn-signed-elus"
                        && groups[i].dataset() == groups[bi].dataset()
                }) else {
                    continue;
                };
                let _ = writeln!(
                    md,
                    "\n#### Binary vs signed Supermask, ELUS, {} (Figure 3)\n\n| | n | test acc % | remaining % | fc1 remaining % | fc1 weights pruned in every run % | input columns masked in every run | paper (50 runs): acc %, remaining %, columns, pruned % |\n|---|---|---|---|---|---|---|---|",
                    groups[bi].dataset()
                );
                for (name, i) in [("binary", bi), ("signed", si)] {
                    let (rem, pruned, cols0, _) = facts(i);
                    let st = &stats[i];
                    let paper =
                        paper_row(&groups[i])
                            .zip(paper_fig3(&groups[i]))
                            .map(|(r, (_, c, p))| {
                                format!("{:.2}, {:.2}, {c}, {p}", r.test_acc.mean, r.remaining.mean)
                            });
                    let _ = writeln!(
                        md,
                        "| {name} ({}) | {} | {} | {} | {rem:.2} | {pruned:.2} | {cols0} | {} |",
                        groups[i].label,
                        st.n,
                        band_md(&st.test_acc, 2),
                        band_md(&st.remaining, 2),
                        paper.unwrap_or_else(|| "-".into())
                    );
                }
                if let Some(w) = comparisons(
                    &groups,
                    &[(groups[si].label.clone(), groups[bi].label.clone())],
                )?
                .first()
                .and_then(|c| c.test)
                {
                    let _ = writeln!(
                        md,
                        "\nWelch's test, signed vs binary test accuracy: t = {:.2}, p = {:.2e}{}.",
                        w.t,
                        w.p,
                        if w.p < ALPHA { " (p < 0.01)" } else { "" }
                    );
                }
            }
            md.push('\n');
            for &i in &fcn {
                let runs = &masks[i];
                let (rows, cols) = runs[0][0].matrix_dims();
                let vals: Vec<&[i8]> = runs.iter().map(|r| r[0].values.as_slice()).collect();
                let sum = masks::abs_sum(&vals);
                let name = format!("fc1-abs-sum-{}", groups[i].label);
                plots::matrix_chart(
                    &fig(&name),
                    &format!(
                        "{}: sum of |fc1 mask| over {} runs (rows: units, columns: input pixels)",
                        groups[i].label,
                        runs.len()
                    ),
                    rows,
                    cols,
                    Matrix::Heat {
                        values: &sum,
                        max: runs.len() as u32,
                    },
                )?;
                md.push_str(&link(
                    &name,
                    &format!("{} first-layer |mask| sum", groups[i].label),
                ));
                md.push('\n');
            }
            // Figure 1: an input digit above a first-layer mask.
            let pick = fcn
                .iter()
                .copied()
                .find(|&i| groups[i].preset().contains("signed-elus"))
                .unwrap_or(fcn[0]);
            let g = &groups[pick];
            match supermask_datasets::load_by_name(
                &opts.data_dir,
                g.dataset(),
                supermask_datasets::Split::Test,
            ) {
                Ok(test) => {
                    let idx = (0..test.n).find(|&k| test.labels[k] == 8).unwrap_or(0);
                    let img = &test.images[idx * test.dim..(idx + 1) * test.dim];
                    let (lo, hi) = img
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                    let px: Vec<f32> = img
                        .iter()
                        .map(|&v| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 })
                        .collect();
                    let first = &masks[pick][0][0];
                    let (rows, _) = first.matrix_dims();
                    plots::input_and_mask_chart(&fig("figure1-input-and-mask"), &format!("Test sample {idx} (label {}) flattened, above the fc1 mask of {} seed {}", test.labels[idx], g.label, g.runs[0].seed), &px, rows, &first.values)?;
                    md.push_str("\n### An input beside the first-layer mask (Figure 1)\n\n");
                    md.push_str(&link(
                        "figure1-input-and-mask",
                        "input and first-layer mask",
                    ));
                }
                Err(e) => {
                    let _ = writeln!(
                        md,
                        "\nFigure 1 skipped: the test set could not be read ({e:#}).\n"
                    );
                }
            }
        }

        // Figure 9: the pattern of one layer in two runs of the first masked group.
        let i = masked
            .iter()
            .copied()
            .find(|&i| groups[i].preset().contains("signed-elus"))
            .unwrap_or(masked[0]);
        let runs = &masks[i];
        let li = match &opts.pattern_layer {
            Some(name) => runs[0]
                .iter()
                .position(|l| &l.name == name)
                .with_context(|| {
                    format!(
                        "--pattern-layer {name}: no masked layer of that name; layers: {}",
                        runs[0]
                            .iter()
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?,
            // The paper's Figure 9 shows a conv net's first fully connected layer; a net
            // without convs shows its second layer (the first is Figure 3's).
            None => {
                let layers = &runs[0];
                if layers.iter().any(|l| l.shape.len() == 4) {
                    layers.iter().position(|l| l.shape.len() == 2).unwrap_or(0)
                } else {
                    1.min(layers.len() - 1)
                }
            }
        };
        md.push_str("\n### Mask patterns (Figure 9)\n\n+1 green, -1 red, 0 white.\n\n");
        for (r, run) in runs.iter().zip(&groups[i].runs).take(2) {
            let l = &r[li];
            let (rows, cols) = l.matrix_dims();
            let name = format!("pattern-{}-{}-seed{}", groups[i].label, l.name, run.seed);
            plots::matrix_chart(
                &fig(&name),
                &format!(
                    "{} seed {}: {} mask ({rows} x {cols})",
                    groups[i].label, run.seed, l.name
                ),
                rows,
                cols,
                Matrix::Pattern(&l.values),
            )?;
            md.push_str(&link(&name, &format!("{} mask pattern", l.name)));
            md.push('\n');
        }
    }
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    write_atomic(out, md.as_bytes())?;
    Ok(())
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

    /// The paper's ELUS row is 97.48 [97.3, 97.7]: 97.2 lies below the band, 97.5 inside.
    #[test]
    fn our_mean_is_marked_against_the_paper_band() {
        let band = |mean| Band {
            n: 5,
            mean,
            q05: mean - 0.1,
            q95: mean + 0.1,
        };
        let elus = PAPER
            .iter()
            .find(|r| r.preset == "table1-fcn-signed-elus")
            .unwrap();
        assert_eq!(
            versus(&band(97.5), &elus.test_acc, 2),
            ("97.48 [97.3, 97.7]".into(), "inside")
        );
        assert_eq!(versus(&band(97.2), &elus.test_acc, 2).1, "outside");
        let binary = PAPER
            .iter()
            .find(|r| r.preset == "figure3-fcn-binary-elus")
            .unwrap();
        assert_eq!(versus(&band(97.2), &binary.test_acc, 2).1, "(no band)");
    }
}
