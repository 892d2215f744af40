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
//! default 2). Each side runs 2 epochs and reports the second (the first warms up).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{run_torch, set_threads, synthetic_mnist};
use supermask_train::{config::RunConfig, Trainer};

fn ours(config: &str, overrides: &[&str], data: &supermask_datasets::Dataset) -> f64 {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(config, &overrides, "bench preset").expect("config");
    let mut t = Trainer::new(&cfg, &data.shape, &Device::Cpu).expect("model");
    let mut last = 0.0;
    for epoch in 0..2 {
        let t0 = Instant::now();
        t.train_epoch(data, epoch).expect("epoch");
        last = t0.elapsed().as_secs_f64();
    }
    last
}

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
        "{:<30} {:>10} {:>12} {:>8}",
        "", "ours [s]", "pytorch [s]", "ratio"
    );
    let torch = |flag: Option<&str>| {
        let mut args = vec!["--threads", th.as_str(), "--epochs", "2"];
        args.extend(flag);
        run_torch(script, &args).and_then(|v| v["epoch_seconds"].as_f64())
    };
    let row = |name: &str, o: f64, p: Option<f64>| match p {
        Some(p) => println!("{name:<30} {o:>10.3} {p:>12.3} {:>8.2}", o / p),
        None => println!("{name:<30} {o:>10.3} {:>12} {:>8}", "n/a", "n/a"),
    };
    let torch_signed = torch(None);
    row(
        "signed ELUS (init density)",
        ours(signed, &[], &data),
        torch_signed,
    );
    row(
        "signed ELUS, 3.5% kept",
        ours(signed, &[sparse], &data),
        torch_signed,
    );
    row(
        "signed ELUS, reference path",
        ours(signed, &["train.kernels.path=\"reference\""], &data),
        torch_signed,
    );
    row(
        "dense baseline",
        ours(dense, &[], &data),
        torch(Some("--dense")),
    );
}
