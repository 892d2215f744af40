//! One training epoch of the signed-Supermask FCN (60,000 samples, batch 128, 2 threads),
//! ours and PyTorch's (when `torch` imports) measured in the same run, and the ratio.
//!
//! Rows: the signed ELUS preset at its initial mask density (about 96% of the weights kept:
//! the dense kernels run), the same with 96.5% of the scores pruned (the density of the
//! trained net, 3.5% kept: the sparse ternary kernels run; PyTorch's work does not depend on
//! the density, so its signed time is the reference for both), the same on the reference
//! (generic candle ops) path, and the dense baseline for context.
//!
//! `cargo bench -p supermask-benches --bench fcn_epoch` (threads: `SUPERMASK_BENCH_THREADS`,
//! default 2). Each side runs 2 epochs and reports the second (the first warms up). Each
//! side's mean training loss of both epochs is printed, and no ratio is reported unless both
//! runs are healthy (finite losses below 10, not growing: [`supermask_benches::unhealthy`]).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{run_torch, set_threads, synthetic_mnist, unhealthy};
use supermask_train::{config::RunConfig, Trainer};

/// Largest mean epoch loss of a healthy run (a 10-class net at chance has 2.3).
const LOSS_BOUND: f64 = 10.0;

/// Our second epoch's seconds and both epochs' mean training losses.
fn ours(config: &str, overrides: &[&str], data: &supermask_datasets::Dataset) -> (f64, Vec<f64>) {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(config, &overrides, "bench preset").expect("config");
    let mut t = Trainer::new(&cfg, &data.shape, &Device::Cpu).expect("model");
    let (mut last, mut losses) = (0.0, Vec::new());
    for epoch in 0..2 {
        let t0 = Instant::now();
        let stats = t.train_epoch(data, epoch).expect("epoch");
        last = t0.elapsed().as_secs_f64();
        losses.push(stats.loss);
    }
    (last, losses)
}

fn losses_text(l: &[f64]) -> String {
    match l {
        [a, .., b] => format!("{a:.3} -> {b:.3}"),
        [a] => format!("{a:.3}"),
        [] => "n/a".into(),
    }
}

/// A side's seconds and losses, as the PyTorch script reports them.
type Side = Option<(f64, Vec<f64>)>;

fn main() {
    let threads = set_threads();
    supermask_train::link_plugins();
    let data = synthetic_mnist(60_000, 0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_fcn_epoch.py");
    let th = threads.to_string();
    let signed = include_str!("../../configs/paper/table1-fcn-signed-elus.toml");
    let dense = include_str!("../../configs/paper/table1-fcn-baseline-elu.toml");
    let sparse = "masking.threshold={ type = \"initial-rate\", rate = 0.965 }";
    println!(
        "workload: FCN 784-300-100-10, one epoch, 60000 samples, batch 128, {threads} threads"
    );
    println!(
        "{:<30} {:>10} {:>16} {:>12} {:>16} {:>8}",
        "", "ours [s]", "ours loss", "pytorch [s]", "pytorch loss", "ratio"
    );
    let torch = |flag: Option<&str>| -> Side {
        let mut args = vec!["--threads", th.as_str(), "--epochs", "2"];
        args.extend(flag);
        let v = run_torch(script, &args)?;
        let losses = v["epoch_losses"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
            .unwrap_or_default();
        Some((v["epoch_seconds"].as_f64()?, losses))
    };
    let row = |name: &str, (o, ol): (f64, Vec<f64>), p: &Side| {
        let (pt, pl) = match p {
            Some((t, l)) => (format!("{t:.3}"), losses_text(l)),
            None => ("n/a".into(), "n/a".into()),
        };
        let ratio = match (p, unhealthy(&ol, LOSS_BOUND)) {
            (None, _) => "n/a".to_string(),
            (Some(_), Some(w)) => format!("refused (ours: {w})"),
            (Some((t, l)), None) => match unhealthy(l, LOSS_BOUND) {
                Some(w) => format!("refused (pytorch: {w})"),
                None => format!("{:.2}", o / t),
            },
        };
        println!(
            "{name:<30} {o:>10.3} {:>16} {pt:>12} {pl:>16} {ratio:>8}",
            losses_text(&ol)
        );
    };
    let torch_signed = torch(None);
    row(
        "signed ELUS (init density)",
        ours(signed, &[], &data),
        &torch_signed,
    );
    row(
        "signed ELUS, 3.5% kept",
        ours(signed, &[sparse], &data),
        &torch_signed,
    );
    row(
        "signed ELUS, reference path",
        ours(signed, &["train.kernels.path=\"reference\""], &data),
        &torch_signed,
    );
    row(
        "dense baseline",
        ours(dense, &[], &data),
        &torch(Some("--dense")),
    );
}
