//! The `supermask` command line as a library: [`main`] is the whole binary, so a crate that
//! adds plugins ships the same command line with its plugins in a three-line `main`:
//!
//! ```no_run
//! fn main() {
//!     supermask_cli::main()
//! }
//! ```
//!
//! (a plugin defined in the binary's own crate is linked by that crate; see the README, "A
//! plugin in its own crate"). The workflows behind the commands live in libraries: training in
//! `supermask-train`, export and inference glue in [`export`], studies in [`study`].

mod app;
pub mod export;
pub mod models;
pub mod study;

pub use app::{main, run, Cli};
