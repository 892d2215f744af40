//! The exported FCN (`.ssm`, sparse ternary engine) against dense inference: file size vs
//! dense float32 and the paper's CSR metric, and forward time at batch 1 and 256 vs a dense
//! candle forward and dense PyTorch (when `torch` imports), in the same run with the same
//! threads. Then a Conv2 (generated at 2% and 10% kept) and the authors' ResNet20 (built from
//! the Table 4 preset with the paper's 21% kept weights) against dense candle / the training
//! model and dense PyTorch.
//!
//! The model is the Table 1 FCN 784-300-100-10 with the mask densities of the trained ELUS
//! net (seed 0 of docs/results/table1-fcn.md: fc1 2.48%, fc2 8.91%, fc3 73.7% kept), random
//! kept positions and signs, signed-constant magnitudes. `SUPERMASK_BENCH_SSM=path` times an
//! exported file instead (e.g. `supermask export runs/... --out fcn.ssm`).
//!
//! `cargo bench -p supermask-benches --bench infer` (`SUPERMASK_BENCH_ROUNDS=N`: FCN rounds, 5)

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use supermask_benches::{
    generated_conv2, generated_fcn, median, median_time, run_torch, set_threads, unit_values,
};
use supermask_cli::export::export_trainer;
use supermask_core::ForwardCtx;
use supermask_export::{format, Engine};
use supermask_train::{config::RunConfig, Trainer};

/// Calls of the engine and of PyTorch timed for the Conv2 and ResNet20 medians (the dense
/// candle references, 30-100 ms a call, take 10): on a shared 2-core VM 10 calls of a 1-2 ms
/// forward scattered by 1.5x between runs.
const CONV_REPS: usize = 30;

/// Median seconds of `reps` calls after up to 20 warm-up calls.
fn time(reps: usize, f: impl FnMut()) -> f64 {
    median_time(reps, reps.min(20), f)
}

fn main() {
    let threads = set_threads();
    let m = match std::env::var("SUPERMASK_BENCH_SSM") {
        Ok(path) => format::read_file(std::path::Path::new(&path)).expect("model file"),
        Err(_) => generated_fcn(),
    };
    let bytes = format::encode(&m).expect("encode").len();
    let (mut numel, mut kept, mut csr) = (0usize, 0usize, 0usize);
    for l in &m.layers {
        let (n, k) = (l.numel(), l.kept());
        numel += n;
        kept += k;
        // The paper's metric: scipy CSR of the 2-D weight, float32 data + int32 indices +
        // int32 row pointers (rows + 1).
        csr += 4 * k + 4 * k + 4 * (l.shape[0] + 1);
    }
    let dense = 4 * numel;
    println!(
        "model: FCN 784-300-100-10, {kept} of {numel} weights kept ({:.2}%)",
        100.0 * kept as f64 / numel as f64
    );
    println!("size: .ssm {bytes} B | dense float32 {dense} B | CSR (paper's metric) {csr} B");
    println!(
        ".ssm is {:.2}% smaller than dense float32 and {:.2}% smaller than CSR (CSR is {:.2}% smaller than dense)",
        100.0 * (1.0 - bytes as f64 / dense as f64),
        100.0 * (1.0 - bytes as f64 / csr as f64),
        100.0 * (1.0 - csr as f64 / dense as f64)
    );

    let engine = Engine::new(&m).expect("engine");
    let dev = Device::Cpu;
    let ws: Vec<Tensor> = m
        .layers
        .iter()
        .map(|l| {
            Tensor::from_vec(l.dense(), l.shape.as_slice(), &dev)
                .unwrap()
                .t()
                .unwrap()
                .contiguous()
                .unwrap()
        })
        .collect();
    let candle_forward = |x: &Tensor| {
        let mut h = x.clone();
        for (i, w) in ws.iter().enumerate() {
            h = h.matmul(w).unwrap();
            if i + 1 < ws.len() {
                h = h.elu(1.0).unwrap();
            }
        }
        h
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_fcn_infer.py");
    let th = threads.to_string();
    let conv_batch = 32usize;
    let cb = conv_batch.to_string();
    // The FCN in rounds: each round runs the PyTorch script (FCN only) and then times the
    // engine and candle, so every ratio compares timings taken seconds apart (this machine's
    // speed drifts by up to 30% over minutes, for both sides). Reported: the medians over the
    // rounds and the range of the per-round ratios.
    let rounds: usize = std::env::var("SUPERMASK_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let batches = [1usize, 256];
    // times[b] = per round (engine, candle, pytorch).
    let mut times = vec![Vec::new(); batches.len()];
    for _ in 0..rounds {
        let torch = run_torch(script, &["--threads", &th, "--part", "fcn"]);
        for (bi, &batch) in batches.iter().enumerate() {
            let x = unit_values(batch * 784, 99);
            let reps = if batch == 1 { 5000 } else { 300 };
            let e = time(reps, || {
                std::hint::black_box(engine.forward(&x, batch).unwrap());
            });
            let xt = Tensor::from_vec(x.clone(), (batch, 784), &dev).unwrap();
            let c = time(reps / 3, || {
                std::hint::black_box(candle_forward(&xt));
            });
            let p = torch
                .as_ref()
                .and_then(|v| v[format!("batch{batch}_seconds")].as_f64());
            times[bi].push((e, c, p));
        }
    }
    println!("forward time, {threads} threads (median per call; medians over {rounds} rounds)");
    println!(
        "{:<8} {:>12} {:>12} {:>13} {:>10} {:>11} {:>18}",
        "batch",
        "engine [us]",
        "candle [us]",
        "pytorch [us]",
        "vs candle",
        "vs pytorch",
        "per-round range"
    );
    for (bi, &batch) in batches.iter().enumerate() {
        let t = &times[bi];
        let e = median(t.iter().map(|r| r.0).collect());
        let c = median(t.iter().map(|r| r.1).collect());
        let ratios: Vec<f64> = t.iter().filter_map(|r| r.2.map(|p| p / r.0)).collect();
        let (p, r, range) = if ratios.len() == t.len() {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            (
                format!(
                    "{:.1}",
                    median(t.iter().filter_map(|r| r.2).collect()) * 1e6
                ),
                format!("{:.1}x", median(ratios)),
                format!("{lo:.1}x-{hi:.1}x"),
            )
        } else {
            ("n/a".into(), "n/a".into(), "n/a".into())
        };
        println!(
            "{batch:<8} {:>12.1} {:>12.1} {:>13} {:>9.1}x {:>11} {:>18}",
            e * 1e6,
            c * 1e6,
            p,
            c / e,
            r,
            range
        );
    }

    // The Conv2 and ResNet20 references, just before ours.
    let torch = run_torch(
        script,
        &[
            "--threads",
            &th,
            "--part",
            "conv",
            "--conv-batch",
            &cb,
            "--conv-reps",
            &CONV_REPS.to_string(),
        ],
    );
    let torch_secs = |key: &str| torch.as_ref().and_then(|v| v[key].as_f64());
    let ratio = |p: Option<f64>, e: f64| p.map_or("n/a".to_string(), |p| format!("{:.1}x", p / e));
    let ms = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{:.2}", p * 1e3));

    // Conv2 at the density of a trained signed Conv2 (Table 2: 0.6% remaining; here 2% of
    // every layer) and at 10%, against the dense candle forward of the same weights and a
    // dense PyTorch Conv2 (random weights: dense time does not depend on the values).
    let batch = conv_batch;
    let x = unit_values(batch * 3 * 32 * 32, 77);
    let xt = Tensor::from_vec(x.clone(), (batch, 3, 32, 32), &dev).unwrap();
    let torch_conv2 = torch_secs("conv2_seconds");
    println!("Conv2 forward, batch {batch}, {threads} threads (median per call)");
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>12} {:>12}",
        "kept", "engine [ms]", "candle [ms]", "pytorch [ms]", "vs candle", "vs pytorch"
    );
    for density in [0.02f32, 0.1] {
        let m = generated_conv2(density);
        let engine = Engine::new(&m).expect("conv engine");
        let w: Vec<Tensor> = m
            .layers
            .iter()
            .map(|l| Tensor::from_vec(l.dense(), l.shape.as_slice(), &dev).unwrap())
            .collect();
        let dense = || {
            let h = xt.conv2d(&w[0], 1, 1, 1, 1).unwrap().elu(1.0).unwrap();
            let h = h.conv2d(&w[1], 1, 1, 1, 1).unwrap().elu(1.0).unwrap();
            let mut h = h.max_pool2d(2).unwrap().flatten_from(1).unwrap();
            for (i, l) in w[2..].iter().enumerate() {
                h = h.matmul(&l.t().unwrap()).unwrap();
                if i < 2 {
                    h = h.elu(1.0).unwrap();
                }
            }
            h
        };
        let e = time(CONV_REPS, || {
            std::hint::black_box(engine.forward(&x, batch).unwrap());
        });
        let c = time(10, || {
            std::hint::black_box(dense());
        });
        println!(
            "{:<10} {:>14.2} {:>14.2} {:>14} {:>11.1}x {:>12}",
            format!("{:.0}%", density * 100.0),
            e * 1e3,
            c * 1e3,
            ms(torch_conv2),
            c / e,
            ratio(torch_conv2, e)
        );
    }

    // ResNet20 x1 (Table 4 preset) with the paper's 21.13% remaining weights (initial rate
    // 0.7887), against the training model's evaluation forward (fused kernels: dense GEMM at
    // this density) and a dense PyTorch ResNet20 in evaluation mode.
    supermask_train::link_plugins();
    let preset = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/paper/table4-resnet20-x1-signed-elus.toml"
    );
    let text = std::fs::read_to_string(preset).expect("ResNet20 preset");
    let cfg = RunConfig::from_toml(
        &text,
        &["masking.threshold={ type = \"initial-rate\", rate = 0.7887 }".to_string()],
        "resnet20",
    )
    .expect("ResNet20 config");
    let trainer = Trainer::for_config(&cfg, &dev).expect("ResNet20 model");
    let m = export_trainer(&cfg, &trainer).expect("ResNet20 export");
    let (kept, numel) = m
        .layers
        .iter()
        .fold((0, 0), |(k, n), l| (k + l.kept(), n + l.numel()));
    let engine = Engine::new(&m).expect("ResNet20 engine");
    let ctx = ForwardCtx::eval();
    let e = time(CONV_REPS, || {
        std::hint::black_box(engine.forward(&x, batch).unwrap());
    });
    let c = time(10, || {
        std::hint::black_box(trainer.model().forward_t(&xt, &ctx).unwrap());
    });
    let torch_resnet = torch_secs("resnet20_seconds");
    println!(
        "ResNet20 forward, batch {batch}, {:.2}% of {numel} weights kept, {threads} threads",
        100.0 * kept as f64 / numel as f64
    );
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>12} {:>12}",
        "", "engine [ms]", "model [ms]", "pytorch [ms]", "vs model", "vs pytorch"
    );
    println!(
        "{:<10} {:>14.2} {:>14.2} {:>14} {:>11.1}x {:>12}",
        "resnet20",
        e * 1e3,
        c * 1e3,
        ms(torch_resnet),
        c / e,
        ratio(torch_resnet, e)
    );
}
