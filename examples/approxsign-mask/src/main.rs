//! The `supermask` command line with this crate's mask: `supermask-approxsign plugins` lists
//! `signed-approxsign`, and every command (train, sweep, eval, export, report, ...) accepts it.

/// mimalloc, as the framework's own binary uses (optional; about 20% faster training).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    supermask_cli::main_with(&[supermask_approxsign::link])
}
