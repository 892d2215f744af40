//! The paper's numbers (Table 1, Figure 3's text, Table 2 of Koster et al., "Signing the
//! Supermask"), read from `paper.toml` beside this file, and how a group is matched to them.

use serde::Deserialize;
use std::sync::OnceLock;

use super::records::Group;
use crate::stats::Band;

/// The data file, compiled in.
const PAPER_TOML: &str = include_str!("paper.toml");

/// A published number: mean with an optional 5-95% band.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Mean.
    pub mean: f64,
    /// 5% and 95% quantiles, when the paper gives them.
    #[serde(default)]
    pub band: Option<(f64, f64)>,
}

/// One row of the paper's results, keyed by preset and dataset.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperRow {
    /// Preset file name (configs/paper/).
    pub preset: String,
    /// Dataset.
    pub dataset: String,
    /// Where in the paper.
    pub source: String,
    /// Test accuracy (%).
    pub test_acc: Published,
    /// Remaining weights (%).
    pub remaining: Published,
    /// Training seconds per epoch on the authors' GPU.
    #[serde(default)]
    pub seconds: Option<f64>,
}

/// The paper's Figure 3 facts for the first FCN layer of one preset over 50 runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figure3Row {
    /// Preset file name (configs/paper/).
    pub preset: String,
    /// Input columns (pixels) masked in every run.
    pub columns_masked_in_every_run: usize,
    /// Share of the layer's weights pruned in every run (%).
    pub pruned_in_every_run_percent: f64,
}

/// The paper's numbers for the presets in configs/paper/ (Table 1, Figure 3's text, Table 2).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paper {
    /// Accuracy, remaining weights and time per preset and dataset (`[[row]]`).
    #[serde(rename = "row")]
    pub rows: Vec<PaperRow>,
    /// Figure 3's first-layer facts (`[[figure3]]`).
    pub figure3: Vec<Figure3Row>,
}

/// The paper's numbers, parsed from `paper.toml` on first use.
pub fn paper() -> &'static Paper {
    static PAPER: OnceLock<Paper> = OnceLock::new();
    PAPER.get_or_init(|| {
        toml::from_str(PAPER_TOML)
            .unwrap_or_else(|e| panic!("analysis/src/study/paper.toml is malformed: {e}"))
    })
}

/// The paper's row for a group, when the group is an unmodified preset run on that dataset
/// (a sweep's `[set]` or `[grid]` values make it another experiment).
pub fn paper_row(g: &Group) -> Option<&'static PaperRow> {
    if !g.overrides.is_empty() || g.label.contains('_') {
        return None; // the sweep changed the preset
    }
    paper()
        .rows
        .iter()
        .find(|r| r.preset == g.preset() && r.dataset == g.dataset())
}

/// The paper's Figure 3 facts for a group, when it has a [`paper_row`] and its preset is one
/// of Figure 3's.
pub fn paper_figure3(g: &Group) -> Option<&'static Figure3Row> {
    paper_row(g)?;
    paper().figure3.iter().find(|f| f.preset == g.preset())
}

/// "ours vs theirs" cell: the paper's value and whether our mean lies outside its band.
pub(super) fn versus(ours: &Band, theirs: &Published, digits: usize) -> (String, &'static str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(preset: &str) -> &'static PaperRow {
        paper().rows.iter().find(|r| r.preset == preset).unwrap()
    }

    /// The data file parses, holds every row of the former constants, and its presets exist.
    #[test]
    fn the_paper_file_parses_with_every_row() {
        let p: Paper = toml::from_str(PAPER_TOML).unwrap_or_else(|e| panic!("paper.toml: {e}"));
        assert_eq!(p.rows.len(), 15);
        assert_eq!(p.figure3.len(), 2);

        let elus = row("table1-fcn-signed-elus");
        assert_eq!(
            (elus.dataset.as_str(), elus.source.as_str()),
            ("mnist", "Table 1")
        );
        assert_eq!(elus.test_acc.mean, 97.48);
        assert_eq!(elus.test_acc.band, Some((97.3, 97.7)));
        assert_eq!(elus.remaining.mean, 3.77);
        assert_eq!(elus.remaining.band, Some((3.7, 3.8)));
        assert_eq!(elus.seconds, Some(1.27));

        let conv8 = row("table2-conv8-signed-elus");
        assert_eq!(conv8.dataset, "cifar10");
        assert_eq!((conv8.test_acc.mean, conv8.test_acc.band), (80.91, None));
        assert_eq!((conv8.remaining.mean, conv8.remaining.band), (1.17, None));
        assert_eq!(conv8.seconds, None);

        let f = &p.figure3;
        assert_eq!(f[0].preset, "table1-fcn-signed-elus");
        assert_eq!(f[0].columns_masked_in_every_run, 284);
        assert_eq!(f[0].pruned_in_every_run_percent, 54.11);
        assert_eq!(f[1].preset, "figure3-fcn-binary-elus");
        assert_eq!(f[1].columns_masked_in_every_run, 144);
        assert_eq!(f[1].pruned_in_every_run_percent, 43.63);

        // Every preset names a file in configs/paper/ and appears once per dataset.
        let presets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper");
        for (i, r) in p.rows.iter().enumerate() {
            let file = presets.join(format!("{}.toml", r.preset));
            assert!(file.exists(), "{} is missing", file.display());
            assert!(
                !p.rows[..i]
                    .iter()
                    .any(|o| o.preset == r.preset && o.dataset == r.dataset),
                "{} on {} twice",
                r.preset,
                r.dataset
            );
        }
        for f in &p.figure3 {
            assert!(p.rows.iter().any(|r| r.preset == f.preset), "{}", f.preset);
        }
    }

    /// A misspelt or unknown key is an error, not a silently missing number.
    #[test]
    fn unknown_keys_are_rejected() {
        let text = |key: &str| {
            format!(
                "figure3 = []\n[[row]]\npreset = \"x\"\ndataset = \"mnist\"\nsource = \"Table 1\"\n\
                 test_acc = {{ mean = 1.0, {key} = [0.5, 1.5] }}\nremaining = {{ mean = 100.0 }}\n"
            )
        };
        let ok: Paper = toml::from_str(&text("band")).unwrap();
        assert_eq!(ok.rows[0].test_acc.band, Some((0.5, 1.5)));
        assert!(toml::from_str::<Paper>(&text("bnad")).is_err());
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
        let elus = row("table1-fcn-signed-elus");
        assert_eq!(
            versus(&band(97.5), &elus.test_acc, 2),
            ("97.48 [97.3, 97.7]".into(), "inside")
        );
        assert_eq!(versus(&band(97.2), &elus.test_acc, 2).1, "outside");
        let binary = row("figure3-fcn-binary-elus");
        assert_eq!(versus(&band(97.2), &binary.test_acc, 2).1, "(no band)");
    }
}
