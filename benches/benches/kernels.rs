//! Micro-benchmarks of the fused kernels: the FCN's first layer (300 x 784, batch 128) as dense
//! GEMM vs sparse ternary at several mask densities (the crossover that sets the default of
//! `train.kernels.sparse_below`), building the effective weight, the fused ELU against
//! candle's, and the fused optimizer step.
//!
//! `cargo bench -p supermask-benches --bench kernels`

/// The allocator the CLI uses too (it reuses freed buffers instead of faulting in new pages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use supermask_benches::{median_time, set_threads, unit_values};
use supermask_core::fused::{sgdw_step, EffLayout, Effective, StepParams};

/// Median seconds of `reps` calls after one warm-up call.
fn time(reps: usize, f: impl FnMut()) -> f64 {
    median_time(reps, 1, f)
}

/// Values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    unit_values(n, seed)
        .into_iter()
        .map(|u| 2.0 * u - 1.0)
        .collect()
}

fn main() {
    let threads = set_threads();
    println!("threads: {threads}");
    let (rows, cols, n) = (300, 784, 128);
    let w: Vec<f32> = values(rows * cols, 1)
        .iter()
        .map(|v| 0.05f32.copysign(*v))
        .collect();
    let u = values(rows * cols, 2);
    let xt = values(cols * n, 3);
    let mut out = vec![0.0f32; rows * n];
    let mut out_t = vec![0.0f32; cols * n];
    println!("FCN layer 1 (300 x 784) times a 784 x 128 batch, single thread, microseconds");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10}",
        "density", "dense", "sparse", "dense^T", "sparse^T"
    );
    for density in [0.01f32, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5] {
        let mask: Vec<f32> = u
            .iter()
            .map(|v| if v.abs() < density { v.signum() } else { 0.0 })
            .collect();
        let dense = Effective::build(&w, &mask, rows, cols, Some(0.05), EffLayout::Dense);
        let sparse = Effective::build(&w, &mask, rows, cols, Some(0.05), EffLayout::Sparse);
        let us = |s: f64| s * 1e6;
        let d = time(50, || dense.matmul(&xt, n, &mut out));
        let s = time(50, || sparse.matmul(&xt, n, &mut out));
        let dt = time(50, || dense.matmul_t(&out, n, &mut out_t));
        let st = time(50, || sparse.matmul_t(&out, n, &mut out_t));
        println!(
            "{density:>8.2} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            us(d),
            us(s),
            us(dt),
            us(st)
        );
    }
    let build = time(50, || {
        std::hint::black_box(Effective::build(
            &w,
            &u,
            rows,
            cols,
            Some(0.05),
            EffLayout::Dense,
        ));
    });
    println!("build dense Weff (300 x 784): {:.1} us", build * 1e6);

    let len = 266_200;
    let dev = Device::Cpu;
    let p = Tensor::from_vec(values(len, 4), len, &dev).unwrap();
    let g = Tensor::from_vec(values(len, 5), len, &dev).unwrap();
    let mut v = vec![0.0f32; len];
    let h = StepParams {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        wd: 5e-4,
        l2: 0.0,
    };
    let x = Tensor::from_vec(values(128 * 64 * 32 * 32, 6), (128, 64, 32, 32), &dev).unwrap();
    let kc = supermask_core::fused::KernelConfig::default();
    let e = time(10, || {
        std::hint::black_box(supermask_core::ops::elu(&x, 1.0, &kc).unwrap());
    });
    let ec = time(10, || {
        std::hint::black_box(x.elu(1.0).unwrap());
    });
    println!(
        "ELU forward of a Conv2 activation (128 x 64 x 32 x 32): fused {:.1} ms, candle {:.1} ms",
        e * 1e3,
        ec * 1e3
    );
    let step = time(50, || sgdw_step(&p, &g, &mut v, &h).unwrap());
    println!("fused SGDW step, {len} parameters: {:.1} us", step * 1e6);
}
