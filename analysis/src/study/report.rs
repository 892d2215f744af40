//! `supermask report`: the markdown report beside the paper's numbers, with its figures.

use super::EpochRule;
use anyhow::Context;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};
use supermask_core::{fsio::write_atomic, Result};
use supermask_train::metrics::EpochMetrics;

use super::{
    aggregate::Study,
    compare::{comparisons, comparisons_md, ALPHA},
    group_stats::{band_md, stats_md, GroupStats},
    paper::{paper_figure3, paper_row, versus, PaperRow},
    records::Group,
};
use crate::{
    masks,
    plots::{self, BandSeries, Bar, Matrix, SharesBar},
    stats::Band,
};

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
    /// Which epoch of each run the tables report (the paper: the last).
    pub epoch: EpochRule,
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
    } = Study::load(dir, &opts.pairs, opts.epoch)?;
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
        "{total} finished runs in {} groups (runs that differ only in the seed). Values are at {}, \
         as mean [5%, 95% quantile] over seeds, the paper's layout; the paper ran 50 seeds per \
         setting, so its bands are tighter estimates than ours with few seeds.\n",
        groups.len(),
        opts.epoch.describe()
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

    if let Ok(ablation) = std::fs::read_to_string(dir.join("ablation.md")) {
        md.push_str("## Sanity-check ablations (`supermask ablate`)\n\n");
        md.push_str(&ablation);
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
            for &i in &fcn {
                let (rem, pruned, cols0, cols2n) = facts(i);
                let _ = writeln!(
                    md,
                    "| {} | {} | {rem:.2} | {pruned:.2} | {cols0} | {cols2n} | {} |",
                    groups[i].label,
                    groups[i].runs.len(),
                    paper_figure3(&groups[i])
                        .map(|f| format!(
                            "{}, {}",
                            f.columns_masked_in_every_run, f.pruned_in_every_run_percent
                        ))
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
                            .zip(paper_figure3(&groups[i]))
                            .map(|(r, f)| {
                                format!(
                                    "{:.2}, {:.2}, {}, {}",
                                    r.test_acc.mean,
                                    r.remaining.mean,
                                    f.columns_masked_in_every_run,
                                    f.pruned_in_every_run_percent
                                )
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
