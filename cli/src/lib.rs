//! The `supermask` command line as a library: [`main`] is the whole binary, so a crate that
//! adds plugins ships the same command line with its plugins in a three-line `main`
//! (`examples/approxsign-mask`; the README's "A plugin in its own crate"):
//!
//! ```ignore
//! fn main() {
//!     supermask_cli::main_with(&[my_plugins::link])
//! }
//! ```
//!
//! The workflows behind the commands live in libraries: training in `supermask-train`, export
//! and inference glue in [`export`], studies (`aggregate`, `report`) in
//! [`supermask_analysis::study`].

pub mod ablate;
mod app;
pub mod export;
pub mod models;
mod sweep;

pub use app::{main, main_with, run, Cli};
