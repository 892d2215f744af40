//! One training step of the CIFAR nets at batch 128 on CPU, ours and PyTorch's (when `torch`
//! imports) measured in the same run with the same threads, and the ratio ours / PyTorch:
//! signed Conv2, Conv4 and ResNet20 (their corrected paper presets: per-layer max-fraction
//! threshold, clipped-probability loss, ELUS gain sqrt(1.5)), and the dense baselines of the
//! same nets for context.
//!
//! `cargo bench -p supermask-benches --bench conv_step` (threads: `SUPERMASK_BENCH_THREADS`,
//! default 2). Each side runs 2 warm-up steps and reports the mean of the next 5, on one batch
//! of N(0,1) inputs with a learnable class signal ([`supermask_benches::synthetic_learnable`]),
//! with denormals flushed to zero on both sides. Each
//! side's step losses are printed, and no ratio is reported unless both runs are healthy
//! (finite losses below 10, not growing: [`supermask_benches::unhealthy`]): an exploding net
//! times different arithmetic (the first version of this bench compared against a PyTorch
//! net that had diverged into denormal floats).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{
    run_torch, set_threads, synthetic_learnable, unhealthy, Workload, LOSS_BOUND,
};
use supermask_train::{config::RunConfig, Trainer};

const STEPS: usize = 5;
const WARMUP: usize = 2;

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "conv2 signed",
        preset: include_str!("../../configs/paper/table2-conv2-signed-elus.toml"),
        torch: &["--model", "conv2", "--fraction", "0.4", "--lr", "0.02"],
    },
    Workload {
        name: "conv4 signed",
        preset: include_str!("../../configs/paper/table2-conv4-signed-elus.toml"),
        torch: &["--model", "conv4", "--fraction", "0.4", "--lr", "0.05"],
    },
    Workload {
        name: "resnet20 signed",
        preset: include_str!("../../configs/paper/table4-resnet20-x1-signed-elus.toml"),
        torch: &[
            "--model",
            "resnet20",
            "--fraction",
            "0.75",
            "--bn",
            "none",
            "--lr",
            "0.1",
            "--wd",
            "1e-4",
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

/// Mean seconds of the timed steps and every step's loss.
fn ours(w: &Workload) -> (f64, Vec<f64>) {
    // Augmentation happens in the batch gather, outside PyTorch's timed step: off here.
    let cfg =
        RunConfig::from_toml(w.preset, &["data.augment=false".into()], w.name).expect("preset");
    // One epoch of 128 samples is exactly one step at batch 128.
    let data = synthetic_learnable(128, &[3, 32, 32], 10, 0);
    let mut t = Trainer::new(&cfg, &data.shape, &Device::Cpu).expect("model");
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for epoch in 0..WARMUP + STEPS {
        let t0 = Instant::now();
        let stats = t.train_epoch(&data, epoch).expect("step");
        if epoch >= WARMUP {
            times.push(t0.elapsed().as_secs_f64());
        }
        losses.push(stats.loss);
    }
    (times.iter().sum::<f64>() / times.len() as f64, losses)
}

fn losses_text(l: &[f64]) -> String {
    match (l.first(), l.last()) {
        (Some(a), Some(b)) => format!("{a:.3} -> {b:.3}"),
        _ => "n/a".into(),
    }
}

fn main() {
    let threads = set_threads();
    supermask_train::link_plugins();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_conv_step.py");
    let th = threads.to_string();
    let (w, s) = (WARMUP.to_string(), STEPS.to_string());
    println!(
        "workload: one training step, batch 128, CIFAR shape, {threads} threads, denormals \
         flushed; loss = first -> last of {} steps",
        WARMUP + STEPS
    );
    println!(
        "{:<16} {:>9} {:>16} {:>12} {:>16} {:>7}",
        "model", "ours [s]", "ours loss", "pytorch [s]", "pytorch loss", "ratio"
    );
    for wl in WORKLOADS {
        let (o, ol) = ours(wl);
        let mut args = vec!["--threads", &th, "--warmup", &w, "--steps", &s];
        args.extend(wl.torch);
        let torch = run_torch(script, &args);
        let p = torch.as_ref().and_then(|v| v["step_seconds"].as_f64());
        let pl: Vec<f64> = torch
            .as_ref()
            .and_then(|v| v["losses"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect();
        let ratio = match (p, unhealthy(&ol, LOSS_BOUND), unhealthy(&pl, LOSS_BOUND)) {
            (None, ..) => "n/a".to_string(),
            (Some(p), None, None) => format!("{:.2}", o / p),
            (Some(_), ours_bad, torch_bad) => {
                let why = [("ours", ours_bad), ("pytorch", torch_bad)]
                    .into_iter()
                    .filter_map(|(side, w)| w.map(|w| format!("{side}: {w}")))
                    .collect::<Vec<_>>()
                    .join("; ");
                format!("refused ({why})")
            }
        };
        let p = p.map_or("n/a".into(), |p| format!("{p:.3}"));
        println!(
            "{:<16} {o:>9.3} {:>16} {p:>12} {:>16} {ratio:>7}",
            wl.name,
            losses_text(&ol),
            losses_text(&pl)
        );
    }
}
