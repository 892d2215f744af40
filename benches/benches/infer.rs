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
//! `cargo bench -p supermask-benches --bench infer` (`SUPERMASK_BENCH_ROUNDS=N`: rounds, 5; each
//! round runs the PyTorch script and then times our side, for the FCN and again for the convs)

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use supermask_benches::{
    generated_conv2, generated_fcn, kept_and_numel, median, median_time, paper_resnet20, run_torch,
    set_threads, unit_values,
};
use supermask_core::ForwardCtx;
use supermask_export::{format, Engine};

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
        let [p, r, range] = pytorch_columns(t, 1e6, 1);
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

    conv_rounds(script, rounds, 32, threads, &dev);
}

/// PyTorch's median time (in `unit`s of a second, `digits` decimals), the median of the
/// per-round ratios PyTorch / engine and their range, from per-round `(engine, reference,
/// pytorch)` seconds; "n/a" in all three when some round has no PyTorch time.
fn pytorch_columns(t: &[(f64, f64, Option<f64>)], unit: f64, digits: usize) -> [String; 3] {
    let ratios: Vec<f64> = t.iter().filter_map(|r| r.2.map(|p| p / r.0)).collect();
    if ratios.len() != t.len() || t.is_empty() {
        return ["n/a".into(), "n/a".into(), "n/a".into()];
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let p = median(t.iter().filter_map(|r| r.2).collect()) * unit;
    [
        format!("{p:.digits$}"),
        format!("{:.1}x", median(ratios)),
        format!("{lo:.1}x-{hi:.1}x"),
    ]
}

/// A row of the conv tables: the engine, the dense reference of the same weights, and the
/// key of PyTorch's time in the script's output.
struct ConvRow {
    label: String,
    engine: Engine,
    reference: Box<dyn Fn()>,
    torch_key: &'static str,
}

/// Conv2 at 2% and 10% kept and ResNet20 at the paper's 21% in `rounds` rounds, as the FCN:
/// each round runs the PyTorch script and then times every row, so each ratio compares
/// timings taken seconds apart. Reported per row: median times, and the median and range of
/// the per-round ratios (none when PyTorch gave no time in some round).
fn conv_rounds(script: &str, rounds: usize, batch: usize, threads: usize, dev: &Device) {
    let (th, cb, reps) = (
        threads.to_string(),
        batch.to_string(),
        CONV_REPS.to_string(),
    );
    let args = [
        "--threads",
        &th,
        "--part",
        "conv",
        "--conv-batch",
        &cb,
        "--conv-reps",
        &reps,
    ];
    let x = unit_values(batch * 3 * 32 * 32, 77);
    let xt = Tensor::from_vec(x.clone(), (batch, 3, 32, 32), dev).unwrap();
    let mut rows: Vec<ConvRow> = [0.02f32, 0.1]
        .into_iter()
        .map(|density| conv2_row(density, &xt))
        .collect();
    let (resnet, kept) = resnet20_row(&xt);
    rows.push(resnet);
    // times[row] = per round (engine, reference, pytorch).
    let mut times = vec![Vec::new(); rows.len()];
    for _ in 0..rounds {
        let torch = run_torch(script, &args);
        for (row, t) in rows.iter().zip(&mut times) {
            let e = time(CONV_REPS, || {
                std::hint::black_box(row.engine.forward(&x, batch).unwrap());
            });
            let c = time(10, || (row.reference)());
            let p = torch.as_ref().and_then(|v| v[row.torch_key].as_f64());
            t.push((e, c, p));
        }
    }
    println!(
        "Conv2 (kept: every layer) and ResNet20 ({kept}) forward, batch {batch}, {threads} \
         threads (median per call; medians over {rounds} rounds; reference: dense candle for \
         Conv2, the training model for ResNet20)"
    );
    println!(
        "{:<14} {:>12} {:>15} {:>13} {:>13} {:>11} {:>16}",
        "model",
        "engine [ms]",
        "reference [ms]",
        "pytorch [ms]",
        "vs reference",
        "vs pytorch",
        "per-round range"
    );
    for (row, t) in rows.iter().zip(&times) {
        let e = median(t.iter().map(|r| r.0).collect());
        let c = median(t.iter().map(|r| r.1).collect());
        let [p, r, range] = pytorch_columns(t, 1e3, 2);
        println!(
            "{:<14} {:>12.2} {:>15.2} {:>13} {:>12.1}x {:>11} {:>16}",
            row.label,
            e * 1e3,
            c * 1e3,
            p,
            c / e,
            r,
            range
        );
    }
}

/// Conv2 (generated, `density` of every layer kept; Table 2's trained signed Conv2 keeps
/// 0.6%) against the dense candle forward of the same weights and a dense PyTorch Conv2
/// (random weights: dense time does not depend on the values).
fn conv2_row(density: f32, xt: &Tensor) -> ConvRow {
    let m = generated_conv2(density);
    let engine = Engine::new(&m).expect("conv engine");
    let w: Vec<Tensor> = m
        .layers
        .iter()
        .map(|l| Tensor::from_vec(l.dense(), l.shape.as_slice(), xt.device()).unwrap())
        .collect();
    let xt = xt.clone();
    let dense = move || {
        let h = xt.conv2d(&w[0], 1, 1, 1, 1).unwrap().elu(1.0).unwrap();
        let h = h.conv2d(&w[1], 1, 1, 1, 1).unwrap().elu(1.0).unwrap();
        let mut h = h.max_pool2d(2).unwrap().flatten_from(1).unwrap();
        for (i, l) in w[2..].iter().enumerate() {
            h = h.matmul(&l.t().unwrap()).unwrap();
            if i < 2 {
                h = h.elu(1.0).unwrap();
            }
        }
        std::hint::black_box(h);
    };
    ConvRow {
        label: format!("conv2 {:.0}%", density * 100.0),
        engine,
        reference: Box::new(dense),
        torch_key: "conv2_seconds",
    }
}

/// ResNet20 x1 (Table 4 preset) with the paper's 21.13% remaining weights (initial rate
/// 0.7887), against the training model's evaluation forward (fused kernels: dense GEMM at
/// this density) and a dense PyTorch ResNet20 in evaluation mode. Also returns what is kept.
fn resnet20_row(xt: &Tensor) -> (ConvRow, String) {
    let (trainer, m) = paper_resnet20(xt.device());
    let (kept, numel) = kept_and_numel(&m);
    let engine = Engine::new(&m).expect("ResNet20 engine");
    let xt = xt.clone();
    let ctx = ForwardCtx::eval();
    let model = move || {
        std::hint::black_box(trainer.model().forward_t(&xt, &ctx).unwrap());
    };
    let row = ConvRow {
        label: "resnet20".into(),
        engine,
        reference: Box::new(model),
        torch_key: "resnet20_seconds",
    };
    let kept = format!(
        "{:.2}% of {numel} weights kept",
        100.0 * kept as f64 / numel as f64
    );
    (row, kept)
}
