//! One training step of the CIFAR nets at batch 128 on CPU, ours and PyTorch's (when `torch`
//! imports) measured in the same run with the same threads, and the ratio ours / PyTorch:
//! signed Conv2, Conv4 and ResNet20 (their paper presets), and the dense baselines of the same
//! nets for context.
//!
//! `cargo bench -p supermask-benches --bench conv_step` (threads: `SUPERMASK_BENCH_THREADS`,
//! default 2). Each side runs 2 warm-up steps and reports the mean of the next 5. Both sides
//! draw the same kind of masks: one global threshold pruning the preset's initial rate.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{run_torch, set_threads, synthetic};
use supermask_cli::{config::RunConfig, Trainer};

const STEPS: usize = 5;
const WARMUP: usize = 2;

struct Workload {
    name: &'static str,
    preset: &'static str,
    torch: &'static [&'static str],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "conv2 signed",
        preset: include_str!("../../configs/paper/table2-conv2-signed-elus.toml"),
        torch: &["--model", "conv2", "--prune-rate", "0.295", "--lr", "0.02"],
    },
    Workload {
        name: "conv4 signed",
        preset: include_str!("../../configs/paper/table2-conv4-signed-elus.toml"),
        torch: &["--model", "conv4", "--prune-rate", "0.193", "--lr", "0.05"],
    },
    Workload {
        name: "resnet20 signed",
        preset: include_str!("../../configs/paper/table4-resnet20-x1-signed-elus.toml"),
        torch: &[
            "--model",
            "resnet20",
            "--prune-rate",
            "0.75",
            "--bn",
            "none",
        ],
    },
    Workload {
        name: "conv2 dense",
        preset: include_str!("../../configs/paper/table2-conv2-baseline-he.toml"),
        torch: &[
            "--model", "conv2", "--dense", "--lr", "0.008", "--wd", "7e-4",
        ],
    },
    Workload {
        name: "conv4 dense",
        preset: include_str!("../../configs/paper/table2-conv4-baseline-he.toml"),
        torch: &[
            "--model", "conv4", "--dense", "--lr", "0.008", "--wd", "7e-4",
        ],
    },
    Workload {
        name: "resnet20 dense",
        preset: include_str!("../../configs/paper/table4-resnet20-x1-baseline-he.toml"),
        torch: &[
            "--model",
            "resnet20",
            "--dense",
            "--bn",
            "learnable",
            "--lr",
            "0.2",
            "--wd",
            "1e-4",
        ],
    },
];

fn ours(w: &Workload) -> f64 {
    // Augmentation happens in the batch gather, outside PyTorch's timed step: off here.
    let cfg =
        RunConfig::from_toml(w.preset, &["data.augment=false".into()], w.name).expect("preset");
    // One epoch of 128 samples is exactly one step at batch 128.
    let data = synthetic(128, &[3, 32, 32], 10, 0);
    let mut t = Trainer::new(&cfg, &data.shape, &Device::Cpu).expect("model");
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
    println!("workload: one training step, batch 128, CIFAR shape, {threads} threads");
    println!(
        "{:<18} {:>12} {:>12} {:>8}",
        "model", "ours [s]", "pytorch [s]", "ratio"
    );
    for wl in WORKLOADS {
        let o = ours(wl);
        let mut args = vec!["--threads", &th, "--warmup", &w, "--steps", &s];
        args.extend(wl.torch);
        match run_torch(script, &args).and_then(|v| v["step_seconds"].as_f64()) {
            Some(p) => println!("{:<18} {o:>12.3} {p:>12.3} {:>8.2}", wl.name, o / p),
            None => println!("{:<18} {o:>12.3} {:>12} {:>8}", wl.name, "n/a", "n/a"),
        }
    }
}
