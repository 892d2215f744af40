//! Statistics, size metrics, mask analyses and figures for supermask experiments: the numbers
//! and plots of the paper's tables and figures, computed from plain values so each piece can be
//! tested against a reference computation; [`study`] loads finished runs, groups them and writes
//! `supermask aggregate`'s tables and `supermask report`'s report beside the paper's numbers.

pub mod masks;
pub mod plots;
pub mod size;
pub mod stats;
pub mod study;
