//! One training step of the signed-Supermask Conv2 and Conv4 (Table 7) at batch 128 on CPU,
//! ours and PyTorch's (when `torch` imports) measured in the same run, and the ratio.
//!
//! `cargo bench -p supermask-benches --bench conv_step` (threads: `SUPERMASK_BENCH_THREADS`,
//! default 2). Each side runs 2 warm-up steps and reports the mean of the next 5.

/// The allocator the CLI uses too (it reuses freed buffers instead of faulting in new pages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{run_torch, set_threads, synthetic};
use supermask_cli::{config::RunConfig, Trainer};

const STEPS: usize = 5;
const WARMUP: usize = 2;

fn ours(model: &str) -> f64 {
    let preset = match model {
        "conv2" => include_str!("../../configs/paper/table2-conv2-signed-elus.toml"),
        _ => include_str!("../../configs/paper/table2-conv4-signed-elus.toml"),
    };
    // One epoch of 128 samples is exactly one step at batch 128.
    let cfg = RunConfig::from_toml(preset, &[], model).expect("preset");
    let data = synthetic(128, &[3, 32, 32], 10, 0);
    let mut t = Trainer::new(&cfg, &Device::Cpu).expect("model");
    let mut times = Vec::new();
    for epoch in 0..WARMUP + STEPS {
        let t0 = Instant::now();
        t.train_epoch(&data, epoch, &mut |_, _, _| {})
            .expect("step");
        if epoch >= WARMUP {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.iter().sum::<f64>() / times.len() as f64
}

fn main() {
    let threads = set_threads();
    supermask_cli::link_plugins();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_conv_step.py");
    let th = threads.to_string();
    let (w, s) = (WARMUP.to_string(), STEPS.to_string());
    println!("workload: signed Supermask training step, batch 128, CIFAR shape, {threads} threads");
    println!(
        "{:<10} {:>12} {:>12} {:>8}",
        "model", "ours [s]", "pytorch [s]", "ratio"
    );
    for model in ["conv2", "conv4"] {
        let o = ours(model);
        let args = [
            "--model",
            model,
            "--threads",
            &th,
            "--warmup",
            &w,
            "--steps",
            &s,
        ];
        match run_torch(script, &args).and_then(|v| v["step_seconds"].as_f64()) {
            Some(p) => println!("{model:<10} {o:>12.3} {p:>12.3} {:>8.2}", o / p),
            None => println!("{model:<10} {o:>12.3} {:>12} {:>8}", "n/a", "n/a"),
        }
    }
}
