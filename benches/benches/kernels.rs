//! Micro-benchmarks of the fused kernels: the FCN's first layer (300 x 784, batch 128) as dense
//! GEMM vs sparse ternary at several mask densities (the crossover that sets the default of
//! `train.kernels.sparse_below`), building the effective weight, the fused ELU against
//! candle's, the fused optimizer step, and a signed ResNet20 3x3 layer's forward and backward
//! with the dense and the sparse effective weight at several kept shares, and the ResNet stem's
//! 3x3 "same" max-pool.
//!
//! `cargo bench -p supermask-benches --bench kernels [-- SECTION...]`, sections `fcn`, `conv`
//! and `pool` (all when none is named).

/// The allocator the CLI uses too (it reuses freed buffers instead of faulting in new pages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor, Var};
use supermask_benches::{median_time, set_threads, unit_values};
use supermask_core::fused::{
    sgdw_step, EffLayout, Effective, KernelConfig, KernelPath, StepParams,
};
use supermask_core::ops::Epilogue;
use supermask_core::registry::{init_from_table, mask_from_table, threshold_from_table};
use supermask_core::{ForwardCtx, Layer, LayerFactory, MaskingConfig, Taus};

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
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |section: &str| named.is_empty() || named.iter().any(|n| n == section);
    if run("fcn") {
        fcn_layer();
    }
    if run("conv") {
        conv_layers();
    }
    if run("pool") {
        stem_pool();
    }
}

/// The FCN's first layer (dense against sparse at several densities), building the effective
/// weight, the ELU and the optimizer step.
fn fcn_layer() {
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

/// The ResNet stem's 3x3 stride-1 "same" max-pool on a batch of 128 16-channel 32x32 maps,
/// forward alone and forward with backward, fused against the reference path (candle ops).
fn stem_pool() {
    let dev = Device::Cpu;
    let shape = (128, 16, 32, 32);
    let x = Var::from_vec(values(128 * 16 * 32 * 32, 11), shape, &dev).unwrap();
    println!("3x3 same max-pool, 128 x 16 x 32 x 32, milliseconds: forward, forward + backward");
    for (name, path) in [
        ("fused", KernelPath::Fused),
        ("reference", KernelPath::Reference),
    ] {
        let kc = KernelConfig {
            path,
            ..KernelConfig::default()
        };
        let pool = || supermask_core::ops::max_pool_same_stride1(x.as_tensor(), 3, &kc).unwrap();
        let fwd = time(10, || {
            std::hint::black_box(pool());
        });
        let both = time(10, || {
            // The sum's gradient is a broadcast one: the pool's backward is most of the rest.
            std::hint::black_box(pool().sum_all().unwrap().backward().unwrap());
        });
        println!("{name:>10} {:>8.2} {:>8.2}", fwd * 1e3, both * 1e3);
    }
}

fn table(s: &str) -> toml::Table {
    toml::from_str(s).expect("a TOML table")
}

/// Forward and backward (input and score gradients) of a signed 3x3 "same" layer with the ELU
/// epilogue, at ResNet20's three widths and map sizes and Conv4's two, batch 128, for kept shares from 10% to
/// 50%: the dense effective weight (`sparse_below` 0: the direct kernel) against the sparse one
/// (`sparse_below` 1: the ternary kernel over taps or im2col rows, as the plan picks).
fn conv_layers() {
    supermask_plugins::link();
    let masking = MaskingConfig::Masked {
        mask: mask_from_table(table("type = \"signed\"")).unwrap(),
        threshold: threshold_from_table(table("type = \"fixed\"")).unwrap(),
        weight_init: init_from_table(table("type = \"elus\"\ndist = \"signed-constant\"")).unwrap(),
        score_init: init_from_table(table("type = \"xavier-uniform\"")).unwrap(),
    };
    let dev = Device::Cpu;
    println!("signed 3x3 layer + ELU, batch 128, forward and backward, milliseconds");
    println!(
        "{:>14} {:>6} {:>8} {:>8}",
        "layer", "kept", "dense", "sparse"
    );
    for (ch, hw) in [(16usize, 32usize), (32, 16), (64, 8), (64, 32), (128, 16)] {
        let n = ch * ch * 9;
        let mut f = LayerFactory::new(masking.clone(), dev.clone(), 1);
        let mut layer = f.conv2d("conv", ch, ch, 3, 1, 1).unwrap();
        let Layer::Masked(l) = &mut layer else {
            unreachable!("a masked factory gives masked layers")
        };
        let w: Vec<f32> = values(n, 7).iter().map(|v| 0.1f32.copysign(*v)).collect();
        l.set_weight(Tensor::from_vec(w, (ch, ch, 3, 3), &dev).unwrap())
            .unwrap();
        // Scores uniform in [-1, 1): thresholds at +-tau keep a share 1 - tau.
        l.scores()
            .set(&Tensor::from_vec(values(n, 8), (ch, ch, 3, 3), &dev).unwrap())
            .unwrap();
        let shape = (128, ch, hw, hw);
        let x = Var::from_vec(values(128 * ch * hw * hw, 9), shape, &dev).unwrap();
        let r = Tensor::from_vec(values(128 * ch * hw * hw, 10), shape, &dev).unwrap();
        let ep = Epilogue {
            scale: None,
            elu: Some(1.0),
            pool2: false,
        };
        for kept in [0.1f32, 0.2, 0.3, 0.5] {
            let Layer::Masked(l) = &mut layer else {
                unreachable!()
            };
            l.set_taus(Taus {
                neg: kept - 1.0,
                pos: 1.0 - kept,
            })
            .unwrap();
            let ms = |sparse_below: f64| {
                let c = ForwardCtx {
                    train: true,
                    step: 0,
                    seed: 1,
                    kernels: KernelConfig {
                        path: KernelPath::Fused,
                        sparse_below,
                    },
                };
                1e3 * time(10, || {
                    let y = layer.forward_epilogue(x.as_tensor(), &c, &ep).unwrap();
                    let loss = (&y * &r).unwrap().sum_all().unwrap();
                    std::hint::black_box(loss.backward().unwrap());
                })
            };
            let label = format!("{ch}ch {hw}x{hw}");
            println!("{label:>14} {kept:>6.2} {:>8.1} {:>8.1}", ms(0.0), ms(1.0));
        }
    }
}
