//! Library side of the `supermask` binary: run configs, the trainer, checkpoints, metrics and
//! the `train` / `eval` workflows. Benchmarks and integration tests use it directly.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod metrics;
pub mod models;
pub mod run;
pub mod trainer;

pub use config::RunConfig;
pub use trainer::Trainer;

/// Links the plugin and model crates so every registration exists.
pub fn link_plugins() {
    supermask_plugins::link();
    supermask_models::link();
}

/// Sets up the CPU thread pools before any tensor work; returns the thread count the fused
/// kernels use.
///
/// - `threads` (e.g. `--threads`) sets rayon's pool, where the fused kernels, candle's GEMM
///   and convolutions run (`RAYON_NUM_THREADS` when not given; default: all cores).
/// - candle's separate element-wise pool is kept to one thread (no worker) unless
///   `CANDLE_NUM_THREADS` is set: its workers spin-wait between ops and then compete with the
///   rayon threads for the same cores. Measured on the 2-core development machine: the FCN
///   epoch takes 1.17 s with one candle thread against 1.26-1.48 s with two, the dense FCN
///   epoch 0.96 s against 1.90 s (docs/results/bench.md).
///
/// Must run before the first tensor operation (both pools read the environment once).
pub fn configure_threads(threads: Option<usize>) -> usize {
    if let Some(n) = threads.filter(|&n| n > 0) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
