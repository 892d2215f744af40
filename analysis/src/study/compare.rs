//! Welch's t-tests between groups and their markdown table.

use std::fmt::Write as _;
use supermask_core::Result;

use super::records::{Group, RunRecord};
use crate::stats::{welch, Welch};

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
                (|r: &RunRecord| 100.0 * r.chosen().test_acc) as fn(&RunRecord) -> f64,
            ),
            ("remaining %", |r: &RunRecord| 100.0 * r.chosen().remaining),
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
