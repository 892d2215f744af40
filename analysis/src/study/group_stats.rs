//! Statistics per group: final accuracy, loss, remaining weights and time as bands over seeds,
//! the paper's size metric, and the training time against the matching dense baseline; as CSV
//! and as markdown tables.

use std::{collections::BTreeMap, fmt::Write as _};
use supermask_train::config::RunConfig;

use super::records::{Group, RunRecord};
use crate::{masks::LayerMask, size, stats::Band};

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
                test_acc: g.band(|r| r.chosen().test_acc).scaled(100.0),
                test_loss: g.band(|r| r.chosen().test_loss),
                remaining: g.band(|r| r.chosen().remaining).scaled(100.0),
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

/// `mean [q05, q95]` with `digits` decimals.
pub(super) fn band_md(b: &Band, digits: usize) -> String {
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
