//! One training epoch of the signed-Supermask FCN (60,000 samples, batch 128, 2 threads),
//! ours and PyTorch's (when `torch` imports) measured in the same run, and the ratio.
//!
//! Rows: the signed ELUS preset at its initial mask density (about 96% of the weights kept:
//! the dense kernels run), the same with its first layer at the trained net's density (2.5%
//! kept, the sparse ternary kernels run; see [`SPARSE`]; PyTorch's work does not depend on the
//! density, so its signed time is the reference for both), the same on the reference (generic
//! candle ops) path, and the dense baseline for context.
//!
//! `cargo bench -p supermask-benches --bench fcn_epoch` (threads: `SUPERMASK_BENCH_THREADS`,
//! default 2; rounds: `SUPERMASK_BENCH_ROUNDS`, default 5). Each side runs 2 epochs and reports
//! the second (the first warms up). Each round runs every row on both sides; the table gives
//! the median times, the median of the rounds' ratios and their range: a single PyTorch epoch
//! on the 2-core VMs moved between 1.2 and 2.2 s within minutes. Each side's mean training
//! loss of both epochs is printed, and no ratio is reported unless every run is healthy
//! (finite losses below 10, not growing: [`supermask_benches::unhealthy`]).

/// The sparse row's threshold: `+-0.07255`, fixed. The preset's scores are Xavier-uniform, so a
/// layer keeps `1 - tau / b` of them, `b = sqrt(6 / (fan_in + fan_out))`: fc1 (b = 0.07440)
/// keeps 2.48%, the trained seed-0 net's share (docs/results/table1-fcn.md), fc2 40.8% and fc3
/// 68.9% (the trained net: 8.9% and 73.7%), 7.0% in all. A single global rate of 96.5% (the
/// row before) cut above fc1's largest score: fc1 kept nothing, the logits were zero and the
/// loss stayed at ln 10, a dead net whose biggest layer did no work.
const SPARSE: &str = "masking.threshold={ type = \"fixed\", tau_n = -0.07255, tau_p = 0.07255 }";

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::time::Instant;
use supermask_benches::{median, run_torch, set_threads, synthetic_mnist, unhealthy};
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

/// One row's measurements over the rounds.
#[derive(Default)]
struct Row {
    ours: Vec<f64>,
    ours_losses: Vec<f64>,
    torch: Vec<f64>,
    torch_losses: Vec<f64>,
    /// The reason a round's run was refused, if one was.
    refused: Option<String>,
}

impl Row {
    fn add(&mut self, (o, ol): (f64, Vec<f64>), torch: &Side) {
        if let Some(w) = unhealthy(&ol, LOSS_BOUND) {
            self.refused.get_or_insert(format!("ours: {w}"));
        }
        self.ours.push(o);
        self.ours_losses = ol;
        if let Some((t, l)) = torch {
            if let Some(w) = unhealthy(l, LOSS_BOUND) {
                self.refused.get_or_insert(format!("pytorch: {w}"));
            }
            self.torch.push(*t);
            self.torch_losses.clone_from(l);
        }
    }

    fn print(&self, name: &str) {
        let o = median(self.ours.clone());
        let (pt, ratio, range) = if self.torch.len() != self.ours.len() || self.torch.is_empty() {
            ("n/a".to_string(), "n/a".to_string(), String::new())
        } else if let Some(w) = &self.refused {
            (
                format!("{:.3}", median(self.torch.clone())),
                format!("refused ({w})"),
                String::new(),
            )
        } else {
            let ratios: Vec<f64> = self
                .ours
                .iter()
                .zip(&self.torch)
                .map(|(o, t)| o / t)
                .collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            (
                format!("{:.3}", median(self.torch.clone())),
                format!("{:.2}", median(ratios)),
                format!("{lo:.2}-{hi:.2}"),
            )
        };
        println!(
            "{name:<30} {o:>10.3} {:>16} {pt:>12} {:>16} {ratio:>8} {range:>11}",
            losses_text(&self.ours_losses),
            losses_text(&self.torch_losses),
        );
    }
}

fn main() {
    let threads = set_threads();
    supermask_train::link_plugins();
    let rounds: usize = std::env::var("SUPERMASK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(5);
    let data = synthetic_mnist(60_000, 0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_fcn_epoch.py");
    let th = threads.to_string();
    let signed = include_str!("../../configs/paper/table1-fcn-signed-elus.toml");
    let dense = include_str!("../../configs/paper/table1-fcn-baseline-elu.toml");
    println!(
        "workload: FCN 784-300-100-10, one epoch, 60000 samples, batch 128, {threads} threads, \
         {rounds} rounds"
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
    let names = [
        "signed ELUS (init density)",
        "signed ELUS, fc1 2.5% kept",
        "signed ELUS, reference path",
        "dense baseline",
    ];
    let mut rows: Vec<Row> = names.iter().map(|_| Row::default()).collect();
    // Rounds, each side's runs alternating within a round, so that the machine's slow and
    // fast spells fall on both sides; each round's ratio pairs runs made minutes apart.
    for round in 1..=rounds {
        let torch_signed = torch(None);
        let torch_text = torch_signed
            .as_ref()
            .map_or("n/a".into(), |(t, _)| format!("{t:.3} s"));
        rows[0].add(ours(signed, &[], &data), &torch_signed);
        rows[1].add(ours(signed, &[SPARSE], &data), &torch_signed);
        let reference = ours(signed, &["train.kernels.path=\"reference\""], &data);
        rows[2].add(reference, &torch_signed);
        rows[3].add(ours(dense, &[], &data), &torch(Some("--dense")));
        eprintln!(
            "round {round}/{rounds}: signed ours {:.3} s, pytorch {torch_text}",
            rows[0].ours[round - 1],
        );
    }
    println!("(medians over the rounds; ratio: the median of the rounds' ours / pytorch, and their range)");
    println!(
        "{:<30} {:>10} {:>16} {:>12} {:>16} {:>8} {:>11}",
        "", "ours [s]", "ours loss", "pytorch [s]", "pytorch loss", "ratio", "range"
    );
    for (row, name) in rows.iter().zip(names) {
        row.print(name);
    }
}
