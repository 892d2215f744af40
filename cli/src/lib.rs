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
