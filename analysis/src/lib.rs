//! Statistics, size metrics, mask analyses and figures for supermask experiments: the numbers
//! and plots of the paper's tables and figures, computed from plain values (run loading lives
//! in the CLI), so each piece can be tested against a reference computation.

pub mod masks;
pub mod plots;
pub mod size;
pub mod stats;
