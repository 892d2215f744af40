//! Runs N training steps of a preset on synthetic data, for profiling (`perf record`):
//! `cargo run --release -p supermask-benches --example profile_step -- PRESET.toml STEPS [--set k=v]...`
//! Prints the mean step time after one warm-up step.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{set_threads, synthetic};
use supermask_train::{config::RunConfig, Trainer};

fn main() -> anyhow::Result<()> {
    set_threads();
    supermask_train::link_plugins();
    // The method crates' masks and thresholds (edge-popup, biprop, global top-k), as the
    // `supermask` binary links them, so their presets profile too.
    supermask_edge_popup::link();
    supermask_biprop::link();
    supermask_global_topk::link();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 2,
        "usage: profile_step PRESET.toml STEPS [--set k=v]..."
    );
    let text = std::fs::read_to_string(&args[0])
        .map_err(|e| anyhow::anyhow!("reading the preset {}: {e}", args[0]))?;
    let steps: usize = args[1].parse()?;
    let sets: Vec<String> = args[2..]
        .chunks(2)
        .filter(|c| c[0] == "--set")
        .map(|c| c[1].clone())
        .collect();
    let cfg = RunConfig::from_toml(&text, &sets, &args[0])?;
    let shape = cfg.input_shape()?;
    let classes = if cfg.data.dataset == "cifar100" {
        100
    } else {
        10
    };
    let data = synthetic(cfg.data.batch_size, &shape, classes, 0);
    let mut t = Trainer::new(&cfg, &shape, &Device::Cpu)?;
    t.train_epoch(&data, 0)?;
    let t0 = Instant::now();
    for epoch in 1..=steps {
        t.train_epoch(&data, epoch)?;
    }
    println!(
        "{}: {:.3} ms per step (batch {}, {steps} steps)",
        args[0],
        t0.elapsed().as_secs_f64() * 1e3 / steps as f64,
        cfg.data.batch_size
    );
    Ok(())
}
