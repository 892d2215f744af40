//! Sweeps: a grid file expands into runs (presets x grid values x seeds), each in its own
//! directory `<slug>-s<seed>-<hash>`, executed by local workers or emitted as independent
//! `supermask train --continue` commands for a cluster scheduler.
//!
//! Restart safety: every run is trained under its directory's lock ([`RunLock`]) with
//! [`Start::Continue`], so a sweep that is killed and started again skips finished runs,
//! resumes started ones from their last checkpoint, and two sweeps on one directory never
//! train the same run at once.
//!
//! A grid file:
//!
//! ```toml
//! # paths relative to this file; `base = "one.toml"` for a single preset
//! presets = ["../paper/table1-fcn-signed-elus.toml", "../paper/table1-fcn-signed-he.toml"]
//! seeds = 5                      # seeds 0..5, or a list: [0, 7, 9]
//! [set]                          # overrides applied to every run
//! "data.dataset" = "fashion-mnist"
//! [grid]                         # every combination of these values
//! "optimizer.lr" = [0.05, 0.1]
//! ```

use crate::{
    config::RunConfig,
    run::{self, RunLock, Start, TrainRequest},
};
use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Instant,
};
use supermask_core::Result;

/// The sweep's own record in its output directory: the plan, one entry per run.
pub const PLAN_FILE: &str = "sweep.json";

/// One run of a sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PlannedRun {
    /// Directory name: `<label>-s<seed>-<hash>`.
    pub dir: String,
    /// The group label: preset name and grid values, without the seed.
    pub label: String,
    /// Seed.
    pub seed: u64,
    /// The preset file (absolute).
    pub preset: PathBuf,
    /// `key.path=value` overrides, fixed ones first, then the grid's (without the seed).
    pub overrides: Vec<String>,
    /// First 8 bytes (hex) of the SHA-256 of the effective config's TOML.
    pub hash: String,
}

/// `sweep.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// The grid file the plan was expanded from.
    pub grid: PathBuf,
    /// Every run in grid order.
    pub runs: Vec<PlannedRun>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    presets: Vec<String>,
    seeds: Seeds,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    grid: toml::Table,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Seeds {
    Count(u64),
    List(Vec<u64>),
}

/// Flattens nested tables into `a.b.c` keys; any other value (array, inline value) is a leaf.
/// A table under a quoted dotted key (`"masking.mask" = { type = "binary" }`) is a value.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            // `[grid.data] dataset = [...]` nests; a quoted `"a.b" = { ... }` is a value.
            toml::Value::Table(t) if !k.contains('.') => flatten(&key, t, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// A TOML value as `--set` takes it.
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let inner: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", value_text(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        toml::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(value_text).collect::<Vec<_>>().join(", ")
            )
        }
        other => other.to_string(),
    }
}

/// A value for a directory name: letters, digits, `.`, `+` and `-` only.
fn slug_part(text: &str) -> String {
    let mut s = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '+') {
            s.push(c);
        } else if c == '-' || !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

/// The stable hash of an effective config (first 8 bytes of SHA-256 of its TOML, in hex).
pub fn config_hash(cfg: &RunConfig) -> Result<String> {
    let digest = Sha256::digest(cfg.to_toml()?.as_bytes());
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// Most runs one sweep may plan: far beyond any study (the paper's largest grid has 50), and
/// small enough that the plan and its validation fit in memory.
pub const MAX_RUNS: u64 = 100_000;

/// File in a sweep directory that serializes plan checks between processes.
const PLAN_LOCK_FILE: &str = ".plan.lock";

/// Expands a grid file into runs under `out`; every run's config is loaded and validated, so a
/// bad key or value fails here, naming the run, before anything trains.
pub fn plan(grid_path: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(grid_path)
        .with_context(|| format!("cannot read grid file {}", grid_path.display()))?;
    let origin = grid_path.display().to_string();
    let grid: GridFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim()))?;
    let base_dir = grid_path.parent().unwrap_or(Path::new("."));
    let mut presets = grid.presets.clone();
    presets.extend(grid.base.clone());
    anyhow::ensure!(
        !presets.is_empty(),
        "{origin}: name a preset with `base = \"file.toml\"` or `presets = [...]`"
    );
    let seed_count = match &grid.seeds {
        Seeds::Count(n) => *n,
        Seeds::List(l) => l.len() as u64,
    };
    let mut total = (presets.len() as u64).checked_mul(seed_count);
    let mut axes_check = Vec::new();
    flatten("", &grid.grid, &mut axes_check);
    for (_, v) in &axes_check {
        let n = v.as_array().map_or(1, |a| a.len() as u64);
        total = total.and_then(|t| t.checked_mul(n));
    }
    anyhow::ensure!(
        total.is_some_and(|t| t <= MAX_RUNS),
        "{origin}: the grid expands to {} runs (presets x values x seeds); a sweep holds at most \
         {MAX_RUNS}",
        total.map_or("more than 2^64".to_string(), |t| t.to_string())
    );
    let seeds = match grid.seeds {
        Seeds::Count(n) => (0..n).collect::<Vec<_>>(),
        Seeds::List(l) => l,
    };
    anyhow::ensure!(!seeds.is_empty(), "{origin}: `seeds` is empty");
    let mut fixed = Vec::new();
    flatten("", &grid.set, &mut fixed);
    let mut axes = Vec::new();
    flatten("", &grid.grid, &mut axes);
    let mut axis_values = Vec::new();
    for (k, v) in &axes {
        let values = v
            .as_array()
            .filter(|a| !a.is_empty())
            .with_context(|| format!("{origin}: grid.{k} must be a non-empty list of values"))?;
        anyhow::ensure!(
            k != "seed",
            "{origin}: give seeds with `seeds = ...`, not in [grid]"
        );
        axis_values.push((k.clone(), values.clone()));
    }
    // Every combination of grid values, the first key varying slowest.
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (k, values) in &axis_values {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }

    let mut runs = Vec::new();
    for preset in &presets {
        let path = base_dir.join(preset);
        let path = path
            .canonicalize()
            .with_context(|| format!("{origin}: preset {} not found", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for combo in &combos {
            let mut label = slug_part(&stem);
            let mut overrides: Vec<String> = fixed
                .iter()
                .map(|(k, v)| format!("{k}={}", value_text(v)))
                .collect();
            for (k, v) in combo {
                overrides.push(format!("{k}={}", value_text(v)));
                let short = k.rsplit('.').next().unwrap_or(k);
                let shown = match v {
                    toml::Value::String(s) => s.clone(),
                    other => value_text(other),
                };
                label.push_str(&format!("_{}={}", slug_part(short), slug_part(&shown)));
            }
            for &seed in &seeds {
                let mut all = overrides.clone();
                all.push(format!("seed={seed}"));
                let cfg = RunConfig::load(Some(&path), &all).with_context(|| {
                    format!("{origin}: run {label} seed {seed} has an invalid config")
                })?;
                let hash = config_hash(&cfg)?;
                runs.push(PlannedRun {
                    dir: format!("{label}-s{seed}-{hash}"),
                    label: label.clone(),
                    seed,
                    preset: path.clone(),
                    overrides: overrides.clone(),
                    hash,
                });
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &runs {
        anyhow::ensure!(
            seen.insert(r.hash.clone()),
            "{origin}: two runs have the same effective config ({}); remove the duplicate preset or value",
            r.dir
        );
    }
    Ok(Plan {
        grid: grid_path.canonicalize().unwrap_or(grid_path.to_path_buf()),
        runs,
    })
}

impl PlannedRun {
    /// The run's effective config.
    pub fn config(&self) -> Result<RunConfig> {
        let mut all = self.overrides.clone();
        all.push(format!("seed={}", self.seed));
        RunConfig::load(Some(&self.preset), &all)
    }
}

/// Loads the data of every run still to train once per dataset, so that missing or broken
/// data fails the sweep before any run directory is created ([`execute`] calls it; a caller
/// that writes the plan first calls it before that).
pub fn check_data(plan: &Plan, out: &Path, data_dir: &Path) -> Result<()> {
    let mut checked = std::collections::HashSet::new();
    for r in &plan.runs {
        let cfg = r.config()?;
        if run::finished_run(&out.join(&r.dir), &cfg)?.is_some() {
            continue;
        }
        let key = (
            cfg.data.dataset.clone(),
            cfg.data.train_subset,
            cfg.data.validation,
        );
        if checked.insert(key) {
            run::load_data(&cfg, data_dir).with_context(|| format!("run {}", r.dir))?;
        }
    }
    Ok(())
}

/// Writes (or checks) the plan file of `out`: a directory holds one sweep's runs, so a second
/// plan with other runs is refused rather than mixed in.
pub fn write_plan(out: &Path, plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Check-then-write under an exclusive lock, so two sweeps started at once into one
    // directory cannot both pass the check and mix their runs.
    let lock_path = out.join(PLAN_LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let path = out.join(PLAN_FILE);
    if path.exists() {
        let old: Plan = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let old_dirs: Vec<&str> = old.runs.iter().map(|r| r.dir.as_str()).collect();
        let new_dirs: Vec<&str> = plan.runs.iter().map(|r| r.dir.as_str()).collect();
        anyhow::ensure!(
            old_dirs == new_dirs,
            "{} holds another sweep ({}); choose another --out",
            out.display(),
            old.grid.display()
        );
        return Ok(());
    }
    supermask_core::fsio::write_atomic(&path, serde_json::to_string_pretty(plan)?.as_bytes())
}

/// Quotes a word for a POSIX shell when needed.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One independent `supermask train --continue` command per run.
pub fn emit(
    plan: &Plan,
    out: &Path,
    data: Option<&Path>,
    threads: Option<usize>,
) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("locating the supermask binary")?;
    let out = std::path::absolute(out).context("resolving --out")?;
    Ok(plan
        .runs
        .iter()
        .map(|r| {
            let mut words = vec![exe.display().to_string()];
            if let Some(t) = threads {
                words.extend(["--threads".into(), t.to_string()]);
            }
            words.extend([
                "train".into(),
                "--config".into(),
                r.preset.display().to_string(),
            ]);
            for o in &r.overrides {
                words.extend(["--set".into(), o.clone()]);
            }
            words.extend(["--seed".into(), r.seed.to_string()]);
            words.extend(["--out".into(), out.join(&r.dir).display().to_string()]);
            if let Some(d) = data {
                words.extend(["--data".into(), d.display().to_string()]);
            }
            words.push("--continue".into());
            words
                .iter()
                .map(|w| shell_word(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect())
}

/// How a sweep went.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Runs trained (fully or from a checkpoint) by this sweep.
    pub trained: usize,
    /// Runs found finished.
    pub skipped: usize,
    /// Runs that failed, with the error.
    pub failed: Vec<(String, String)>,
}

/// Executes every run of `plan` under `out` with `workers` threads of `threads` CPU threads
/// each. Runs held by another process are waited for at the end and continued if that process
/// stopped before finishing them.
pub fn execute(
    plan: &Plan,
    out: &Path,
    data_dir: &Path,
    workers: usize,
    threads: usize,
) -> Result<SweepReport> {
    anyhow::ensure!(workers > 0, "--workers must be > 0");
    check_data(plan, out, data_dir)?;
    let queue = Mutex::new(plan.runs.iter().enumerate().collect::<VecDeque<_>>());
    let held = Mutex::new(Vec::new());
    let report = Mutex::new(SweepReport::default());
    let total = plan.runs.len();
    let run_one = |i: usize, r: &PlannedRun, lock: RunLock| {
        let dir = out.join(&r.dir);
        let t0 = Instant::now();
        let result = (|| -> Result<bool> {
            let cfg = r.config()?;
            // Checked here, before train_locked loads the data, so finished runs cost nothing.
            if run::finished_run(&dir, &cfg)?.is_some() {
                return Ok(false);
            }
            let span = tracing::info_span!("run", id = %r.dir);
            let _enter = span.enter();
            run::train_locked(
                TrainRequest {
                    config: cfg,
                    out: dir.clone(),
                    data_dir: data_dir.to_path_buf(),
                    start: Start::Continue,
                    stop_after: None,
                    progress: false,
                    device: Device::Cpu,
                    callbacks: Vec::new(),
                },
                Some(lock),
            )?;
            Ok(true)
        })();
        let mut rep = report.lock().expect("report lock");
        match result {
            Ok(true) => {
                rep.trained += 1;
                tracing::info!(
                    "[{}/{total}] {} finished in {:.0} s",
                    i + 1,
                    r.dir,
                    t0.elapsed().as_secs_f64()
                );
            }
            Ok(false) => {
                rep.skipped += 1;
                tracing::info!("[{}/{total}] {} already finished", i + 1, r.dir);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!("[{}/{total}] {} failed: {msg}", i + 1, r.dir);
                rep.failed.push((r.dir.clone(), msg));
            }
        }
    };
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .context("building a worker's thread pool")?;
            let (queue, held, run_one, report) = (&queue, &held, &run_one, &report);
            handles.push(s.spawn(move || {
                pool.install(|| loop {
                    let Some((i, r)) = queue.lock().expect("queue lock").pop_front() else {
                        break;
                    };
                    match RunLock::try_acquire(&out.join(&r.dir)) {
                        Ok(Some(lock)) => run_one(i, r, lock),
                        Ok(None) => {
                            tracing::info!(
                                "[{}/{total}] {} is being trained by another process; checking it at the end",
                                i + 1,
                                r.dir
                            );
                            held.lock().expect("held lock").push((i, r));
                        }
                        Err(e) => report
                            .lock()
                            .expect("report lock")
                            .failed
                            .push((r.dir.clone(), format!("{e:#}"))),
                    }
                });
                // Runs another process held: wait for its lock, then finish what it left.
                loop {
                    let Some((i, r)) = held.lock().expect("held lock").pop() else {
                        break;
                    };
                    match RunLock::wait(&out.join(&r.dir)) {
                        Ok(lock) => pool.install(|| run_one(i, r, lock)),
                        Err(e) => report
                            .lock()
                            .expect("report lock")
                            .failed
                            .push((r.dir.clone(), format!("{e:#}"))),
                    }
                }
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a sweep worker panicked"))?;
        }
        Ok(())
    })?;
    Ok(report.into_inner().expect("report lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper")
    }

    /// The shipped grid files expand: 7 presets x 5 seeds on MNIST, 6 x 5 on Fashion-MNIST.
    #[test]
    fn shipped_grids_expand() {
        crate::link_plugins();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sweeps");
        let mnist = plan(&dir.join("table1-mnist.toml")).unwrap();
        assert_eq!(mnist.runs.len(), 35);
        let fashion = plan(&dir.join("table1-fashion-mnist.toml")).unwrap();
        assert_eq!(fashion.runs.len(), 30);
        for r in &fashion.runs {
            assert_eq!(r.config().unwrap().data.dataset, "fashion-mnist");
        }
    }

    /// 2 presets x (2 lr x 2 thresholds) x 3 seeds = 24 runs, each config carrying its values.
    #[test]
    fn grid_expands_to_every_combination() {
        crate::link_plugins();
        let dir = tempfile::tempdir().unwrap();
        let grid = dir.path().join("g.toml");
        std::fs::write(
            &grid,
            format!(
                r#"presets = [{:?}, {:?}]
seeds = [0, 7, 9]
[set]
"train.epochs" = 3
[grid]
"optimizer.lr" = [0.05, 0.1]
"masking.threshold" = [{{ type = "fixed", tau_n = -0.02, tau_p = 0.02 }}, {{ type = "initial-rate", rate = 0.05 }}]
"#,
                preset_dir().join("table1-fcn-signed-elus.toml").display().to_string(),
                preset_dir().join("table1-fcn-signed-he.toml").display().to_string()
            ),
        )
        .unwrap();
        let plan = plan(&grid).unwrap();
        assert_eq!(plan.runs.len(), 24);
        let mut labels: Vec<&str> = plan.runs.iter().map(|r| r.label.as_str()).collect();
        labels.dedup();
        assert_eq!(labels.len(), 8, "{labels:?}");
        let r = &plan.runs[0];
        assert!(
            r.dir.starts_with("table1-fcn-signed-elus_") && r.dir.contains("-s0-"),
            "{}",
            r.dir
        );
        let cfg = r.config().unwrap();
        assert_eq!(cfg.train.epochs, 3);
        assert_eq!(cfg.seed, 0);
        assert!(cfg.to_toml().unwrap().contains("tau_p = 0.02"));
        // The hash is of the effective config: stable across expansions, distinct per run.
        assert_eq!(config_hash(&cfg).unwrap(), r.hash);
        let again = super::plan(&grid).unwrap();
        assert_eq!(again, plan);
        let hashes: std::collections::HashSet<_> = plan.runs.iter().map(|r| &r.hash).collect();
        assert_eq!(hashes.len(), 24);
        assert_eq!(plan.runs[2].seed, 9);
    }
}
