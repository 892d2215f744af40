//! A [`Study`] of a directory of runs (groups, masks, statistics, tests) and `supermask
//! aggregate`'s CSV and markdown.

use super::{choose_epochs, EpochRule};
use anyhow::Context;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};
use supermask_core::{fsio::write_atomic, Result};
use supermask_train::rundir::{CONFIG_FILE, METRICS_FILE, SUMMARY_FILE};

use super::{
    compare::{comparisons, comparisons_md, Comparison},
    group_stats::{group_stats, stats_csv, stats_md, GroupStats},
    records::{load_groups, Group},
};
use crate::masks::LayerMask;

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
    /// Loads the finished runs under `dir` and computes their statistics and `pairs`' tests at
    /// the epoch `rule` picks in each run.
    pub fn load(dir: &Path, pairs: &[(String, String)], rule: EpochRule) -> Result<Self> {
        let (mut groups, unfinished) = load_groups(dir)?;
        choose_epochs(&mut groups, rule)?;
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
pub fn aggregate(
    dir: &Path,
    out: &Path,
    pairs: &[(String, String)],
    rule: EpochRule,
) -> Result<String> {
    let Study {
        unfinished,
        stats,
        cmp,
        ..
    } = Study::load(dir, pairs, rule)?;
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
    let _ = writeln!(
        md,
        "Values at {}; mean [5%, 95% quantile] over seeds.\n",
        rule.describe()
    );
    md.push_str(&stats_md(&stats));
    md.push_str("\nWelch's t-tests:\n\n");
    md.push_str(&comparisons_md(&cmp));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("aggregate.csv"), stats_csv(&stats).as_bytes())?;
    write_atomic(&out.join("aggregate.md"), md.as_bytes())?;
    Ok(md)
}
