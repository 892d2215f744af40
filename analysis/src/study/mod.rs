//! `supermask aggregate` and `supermask report`: finished runs grouped by their config without
//! the seed, statistics per group (the layout of Tables 1, 2, 12), Welch's t-tests, the paper's
//! size metric, mask analyses and figures, and a markdown report beside the paper's numbers.
//!
//! One file per job: `records.rs` (runs and their [`Group`]s), `group_stats.rs` (statistics and
//! their tables), `compare.rs` (Welch's tests), `aggregate.rs` ([`Study`], [`aggregate()`]),
//! `paper.rs` (the paper's numbers, from the data file `paper.toml`) and `report.rs`
//! ([`report()`]).

mod aggregate;
mod compare;
mod group_stats;
mod paper;
mod records;
mod report;

pub use aggregate::{aggregate, load_masks, Study};
pub use compare::{comparisons, comparisons_md, Comparison, ALPHA};
pub use group_stats::{group_stats, stats_csv, stats_md, GroupStats};
pub use paper::{paper, paper_figure3, paper_row, Figure3Row, Paper, PaperRow, Published};
pub use records::{choose_epochs, load_groups, EpochRule, Group, RunRecord};
pub use report::{report, ReportOptions};
