//! One training epoch of the signed-Supermask FCN (60,000 samples, batch 128, 2 threads),
//! ours and PyTorch's (when `torch` imports) measured in the same run, and the ratio.
//! The dense baseline of the same net is measured for context.
//!
//! `cargo bench -p supermask-benches --bench fcn_epoch` (threads: `SUPERMASK_BENCH_THREADS`,
//! default 2). Each side runs 2 epochs and reports the second (the first warms up).

/// The allocator the CLI uses too (it reuses freed buffers instead of faulting in new pages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{run_torch, set_threads, synthetic_mnist};
use supermask_cli::{config::RunConfig, Trainer};

fn ours(config: &str, overrides: &[String], data: &supermask_datasets::Dataset) -> f64 {
    let cfg = RunConfig::from_toml(config, overrides, config_name(config)).expect("config");
    let mut t = Trainer::new(&cfg, &Device::Cpu).expect("model");
    let mut last = 0.0;
    for epoch in 0..2 {
        let t0 = Instant::now();
        t.train_epoch(data, epoch, &mut |_, _, _| {})
            .expect("epoch");
        last = t0.elapsed().as_secs_f64();
    }
    last
}

fn config_name(text: &str) -> &'static str {
    if text.contains("mode = \"dense\"") {
        "dense baseline"
    } else {
        "signed ELUS"
    }
}

fn main() {
    let threads = set_threads();
    supermask_cli::link_plugins();
    let data = synthetic_mnist(60_000, 0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_fcn_epoch.py");
    let th = threads.to_string();
    let signed = include_str!("../../configs/paper/table1-fcn-signed-elus.toml");
    let dense = include_str!("../../configs/paper/table1-fcn-baseline-elu.toml");
    println!(
        "workload: FCN 784-300-100-10, one epoch, 60000 samples, batch 128, {threads} threads"
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "", "ours [s]", "pytorch [s]", "ratio"
    );
    for (name, cfg, flag) in [
        ("signed (ELUS)", signed, None),
        ("dense baseline", dense, Some("--dense")),
    ] {
        let o = ours(cfg, &[], &data);
        let mut args = vec!["--threads", th.as_str(), "--epochs", "2"];
        args.extend(flag);
        match run_torch(script, &args).and_then(|v| v["epoch_seconds"].as_f64()) {
            Some(p) => println!("{name:<22} {o:>12.3} {p:>12.3} {:>8.2}", o / p),
            None => println!("{name:<22} {o:>12.3} {:>12} {:>8}", "n/a", "n/a"),
        }
    }
}
