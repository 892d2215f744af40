//! The fused CPU kernels against the reference (generic candle ops) path: forward outputs,
//! input gradients and score/weight gradients on random shapes, for dense and sparse effective
//! weights, signed-constant and real-valued weights, every mask, with and without the fused ELU
//! epilogue; and the fused optimizer step against the reference step.
//!
//! Tolerance: "to 1e-5 relative" means `|fused - reference| <= 1e-5 * max|reference|` per
//! tensor (both sides are f32 sums whose order differs, so elementwise relative error is
//! unbounded where a sum cancels to ~0; the max-norm is the scale of the result).

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use supermask_core::{
    fused::{EffLayout, Effective, KernelConfig, KernelPath},
    ops::{self, Epilogue},
    optim::{Optimizer, OptimizerConfig},
    registry::{init_from_table, mask_from_table, threshold_from_table},
    BatchNorm, BnMode, ForwardCtx, Layer, LayerFactory, MaskingConfig, Taus,
};

fn table(s: &str) -> toml::Table {
    toml::from_str(s).unwrap()
}

fn masking(mask: &str) -> MaskingConfig {
    supermask_plugins::link();
    MaskingConfig::Masked {
        mask: mask_from_table(table(&format!("type = \"{mask}\""))).unwrap(),
        threshold: threshold_from_table(table("type = \"fixed\"")).unwrap(),
        weight_init: init_from_table(table("type = \"elus\"\ndist = \"signed-constant\"")).unwrap(),
        score_init: init_from_table(table("type = \"xavier-uniform\"")).unwrap(),
    }
}

fn dense() -> MaskingConfig {
    supermask_plugins::link();
    MaskingConfig::Dense {
        weight_init: init_from_table(table("type = \"he\"")).unwrap(),
    }
}

/// A deterministic stream of values in [-1, 1) (xorshift; the values only need to be varied).
fn values(n: usize, seed: u64) -> Vec<f32> {
    supermask_core::rng::spread_values(n, seed, -1.0, 1.0)
}

fn ctx(path: KernelPath, sparse_below: f64, train: bool) -> ForwardCtx {
    ForwardCtx {
        train,
        step: 3,
        seed: 11,
        kernels: KernelConfig { path, sparse_below },
    }
}

/// One layer case: the layer, its input shape, the scale, ELU and max-pool epilogue.
struct Case {
    layer: Layer,
    x: Vec<usize>,
    scale: Option<f64>,
    act: Option<f64>,
    pool2: bool,
}

impl Case {
    fn epilogue(&self) -> Epilogue {
        Epilogue {
            scale: self.scale,
            elu: self.act,
            pool2: self.pool2,
        }
    }
}

/// Forward `y`, then the gradients of `sum(y * r)` for the input and the trainable tensor.
fn run(case: &Case, c: &ForwardCtx, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n: usize = case.x.iter().product();
    let x = Var::from_vec(values(n, seed), case.x.as_slice(), &Device::Cpu).unwrap();
    let y = case
        .layer
        .forward_epilogue(x.as_tensor(), c, &case.epilogue())
        .unwrap();
    let r = Tensor::from_vec(values(y.elem_count(), seed + 1), y.shape(), &Device::Cpu).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (_, param) = case.layer.trainable();
    (
        flat(&y),
        flat(grads.get(x.as_tensor()).expect("input gradient")),
        flat(grads.get(param.as_tensor()).expect("parameter gradient")),
    )
}

fn close(what: &str, a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
    close_at(what, a, b, f32::MIN_POSITIVE)
}

/// [`close`] with the scale at least `floor` (for results that cancel far below the size of
/// the terms they sum).
fn close_at(what: &str, a: &[f32], b: &[f32], floor: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len(), "{}: lengths", what);
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(floor);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= 1e-5 * scale,
            "{}[{}]: fused {} vs reference {} (scale {})",
            what,
            i,
            x,
            y,
            scale
        );
    }
    Ok(())
}

/// Whether every 2x2 pooling window of the case's unpooled output has a unique maximum.
fn pool_windows_tie_free(case: &Case, seed: u64) -> bool {
    let n: usize = case.x.iter().product();
    let x = Tensor::from_vec(values(n, seed), case.x.as_slice(), &Device::Cpu).unwrap();
    let c = ctx(KernelPath::Reference, 0.0, true);
    let y = case
        .layer
        .forward_epilogue(
            &x,
            &c,
            &Epilogue {
                pool2: false,
                ..case.epilogue()
            },
        )
        .unwrap();
    let (b, ch, h, w) = y.dims4().unwrap();
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..b * ch).all(|plane| {
        (0..h / 2).all(|i| {
            (0..w / 2).all(|j| {
                let at = |r: usize, c: usize| v[plane * h * w + (2 * i + r) * w + 2 * j + c];
                let win = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                let m = win.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                win.iter().filter(|&&x| x == m).count() == 1
            })
        })
    })
}

/// Fused (dense and sparse layouts) vs reference for one case.
fn check(case: &Case, train: bool, seed: u64) -> Result<(), TestCaseError> {
    let (y0, gx0, gp0) = run(case, &ctx(KernelPath::Reference, 0.0, train), seed);
    for sparse_below in [0.0, 1.0] {
        let (y, gx, gp) = run(case, &ctx(KernelPath::Fused, sparse_below, train), seed);
        close(&format!("y (sparse_below {sparse_below})"), &y, &y0)?;
        close(&format!("dL/dx (sparse_below {sparse_below})"), &gx, &gx0)?;
        close(
            &format!("dL/dparam (sparse_below {sparse_below})"),
            &gp,
            &gp0,
        )?;
    }
    Ok(())
}

/// Sets a masked layer's weight (signed constants or real values), scores and thresholds.
fn prepare(layer: &mut Layer, signed_constant: bool, tau: f32, seed: u64) {
    let Layer::Masked(l) = layer else { return };
    let shape = l.spec.shape.clone();
    let n: usize = shape.iter().product();
    let w: Vec<f32> = values(n, seed + 7)
        .into_iter()
        .map(|v| {
            if signed_constant {
                0.5f32.copysign(v)
            } else {
                v
            }
        })
        .collect();
    l.set_weight(Tensor::from_vec(w, shape.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    let s = Tensor::from_vec(values(n, seed + 8), shape.as_slice(), &Device::Cpu).unwrap();
    l.scores().set(&s).unwrap();
    l.set_taus(Taus {
        neg: -tau,
        pos: tau,
    })
    .unwrap();
}

fn mask_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("signed"), Just("binary"), Just("bernoulli")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Masked linear layers: every mask, both weight kinds, thresholds from "keep almost all"
    /// to "keep almost none", with and without the ELU epilogue, train and eval masks.
    #[test]
    fn fused_linear_matches_reference(
        batch in 1usize..9, inputs in 1usize..40, outputs in 1usize..24,
        mask in mask_name(), signed_constant: bool, tau in 0.001f32..0.95,
        act: bool, train: bool, seed in 0u64..1000,
    ) {
        let mut f = LayerFactory::new(masking(mask), Device::Cpu, seed);
        let mut layer = f.linear("fc", inputs, outputs).unwrap();
        prepare(&mut layer, signed_constant, tau, seed);
        let case = Case {
            layer, x: vec![batch, inputs], scale: None, act: act.then_some(1.0), pool2: false,
        };
        check(&case, train, seed)?;
    }

    /// Masked convolutions of every geometry the models use (k 1 or 3, stride 1 or 2,
    /// padding 0 or 1) on square inputs of odd and even sides, with and without the ELU and
    /// the 2x2 max-pool epilogue. (Candle's own conv backward,
    /// the reference, returns a wrongly shaped input gradient for some non-square strided
    /// inputs, which no model here has; the fused kernels handle any shape.)
    #[test]
    fn fused_conv_matches_reference(
        batch in 1usize..4, c_in in 1usize..4, c_out in 1usize..6,
        k in prop_oneof![Just(1usize), Just(3)], stride in 1usize..3, padding in 0usize..2,
        h in 3usize..9,
        signed_constant: bool, tau in 0.001f32..0.95, act: bool, pool2: bool, seed in 0u64..1000,
        scale in proptest::option::of(0.25f64..2.0),
    ) {
        // The pooled epilogue needs at least a 2x2 output.
        prop_assume!(!pool2 || (h + 2 * padding - k) / stride + 1 >= 2);
        let mut f = LayerFactory::new(masking("signed"), Device::Cpu, seed);
        let mut layer = f.conv2d("conv", c_in, c_out, k, stride, padding).unwrap();
        prepare(&mut layer, signed_constant, tau, seed);
        let case = Case { layer, x: vec![batch, c_in, h, h], scale, act: act.then_some(1.0), pool2 };
        // Ties in a pooling window (an output channel whose mask is all zero, saturated ELUs)
        // route the gradient to the first maximum (fused, PyTorch's rule) or split it
        // (reference): compare only tie-free cases.
        prop_assume!(!pool2 || pool_windows_tie_free(&case, seed));
        check(&case, true, seed)?;
    }

    /// Dense baseline layers through the same fused op (the gradient is the weight's).
    #[test]
    fn fused_dense_layers_match_reference(
        batch in 1usize..5, c_in in 1usize..4, c_out in 1usize..5, h in 3usize..7,
        conv: bool, act: bool, seed in 0u64..1000,
    ) {
        let mut f = LayerFactory::new(dense(), Device::Cpu, seed);
        let (layer, x) = if conv {
            (f.conv2d("conv", c_in, c_out, 3, 1, 1).unwrap(), vec![batch, c_in, h, h])
        } else {
            (f.linear("fc", c_in * h, c_out).unwrap(), vec![batch, c_in * h])
        };
        let scale = conv.then_some(0.999_500_374_6);
        check(&Case { layer, x, scale, act: act.then_some(1.0), pool2: false }, true, seed)?;
    }
}

/// With integer inputs and a power-of-two magnitude every sum is exact in f32, so the dense
/// GEMM and the sparse ternary kernels (signs with one final multiply, or kept values) must
/// agree bit for bit, in both directions.
#[test]
fn dense_and_sparse_effective_weights_agree_exactly_on_integers() {
    let (rows, cols, n) = (37, 91, 13);
    let w: Vec<f32> = values(rows * cols, 1)
        .iter()
        .map(|v| 0.25f32.copysign(*v))
        .collect();
    let mask: Vec<f32> = values(rows * cols, 2)
        .iter()
        .map(|v| if v.abs() < 0.3 { 0.0 } else { v.signum() })
        .collect();
    let xt: Vec<f32> = values(cols * n, 3)
        .iter()
        .map(|v| (v * 8.0).round())
        .collect();
    let gt: Vec<f32> = values(rows * n, 4)
        .iter()
        .map(|v| (v * 8.0).round())
        .collect();
    let dense = Effective::build(&w, &mask, rows, cols, Some(0.25), EffLayout::Dense);
    for magnitude in [Some(0.25), None] {
        let sparse = Effective::build(&w, &mask, rows, cols, magnitude, EffLayout::Sparse);
        assert!(sparse.is_sparse() && !dense.is_sparse());
        let (mut a, mut b) = (vec![0.0; rows * n], vec![0.0; rows * n]);
        dense.matmul(&xt, n, &mut a);
        sparse.matmul(&xt, n, &mut b);
        assert_eq!(a, b, "forward, magnitude {magnitude:?}");
        let (mut a, mut b) = (vec![0.0; cols * n], vec![0.0; cols * n]);
        dense.matmul_t(&gt, n, &mut a);
        sparse.matmul_t(&gt, n, &mut b);
        assert_eq!(a, b, "transposed, magnitude {magnitude:?}");
    }
}

/// `Auto` picks the sparse layout exactly when the kept share is below the threshold.
#[test]
fn auto_layout_switches_at_the_density_threshold() {
    let w = vec![1.0f32; 100];
    let mut mask = vec![0.0f32; 100];
    mask[..30].fill(1.0);
    let at = |below| Effective::build(&w, &mask, 10, 10, Some(1.0), EffLayout::Auto(below));
    assert!(at(0.31).is_sparse());
    assert!(!at(0.30).is_sparse());
    assert!(!at(0.1).is_sparse());
}

/// The fused SGDW/SGD step performs the reference's float operations in the same order, so
/// several steps of each variant give bit-identical parameters.
#[test]
fn fused_optimizer_step_equals_reference_bitwise() {
    let configs = [
        "type = \"sgdw\"\nlr = 0.05\nweight_decay = 5e-4",
        "type = \"sgdw\"\nlr = 0.1\nweight_decay = 1e-3\nnesterov = false",
        "type = \"sgd\"\nlr = 0.05\nl2 = 1e-3",
        "type = \"sgd\"\nlr = 0.2\nmomentum = 0.5\nnesterov = false",
    ];
    for text in configs {
        let cfg: OptimizerConfig = toml::from_str(text).unwrap();
        let p0 = Tensor::from_vec(values(5000, 5), (50, 100), &Device::Cpu).unwrap();
        let (pf, pr) = (
            Var::from_tensor(&p0).unwrap(),
            Var::from_tensor(&p0).unwrap(),
        );
        let mut fused = Optimizer::new(cfg.clone(), vec!["p".into()]).with_path(KernelPath::Fused);
        let mut reference = Optimizer::new(cfg, vec!["p".into()]).with_path(KernelPath::Reference);
        for step in 0..4u64 {
            // A gradient of a loss that depends on the parameter: sum(p^2 * c).
            let c = Tensor::from_vec(values(5000, 10 + step), (50, 100), &Device::Cpu).unwrap();
            let loss = |p: &Var| {
                (p.as_tensor().sqr().unwrap() * &c)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let (gf, gr) = (loss(&pf).backward().unwrap(), loss(&pr).backward().unwrap());
            let factor = 0.9f64.powi(step as i32);
            fused.step(&[&pf], &gf, factor, factor).unwrap();
            reference.step(&[&pr], &gr, factor, factor).unwrap();
            let a = pf.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = pr.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{text}: step {step}");
        }
        // The velocity both keep (a checkpoint's content) is identical too.
        let vf = fused.velocity().unwrap()[0].1.clone();
        let vr = reference.velocity().unwrap()[0].1.clone();
        assert_eq!(vf.dims(), vr.dims());
        assert_eq!(
            vf.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vr.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(vf.dtype(), DType::F32);
    }
}

fn kernels(path: KernelPath) -> KernelConfig {
    KernelConfig {
        path,
        ..Default::default()
    }
}

/// A pooling function under test.
type Pool = dyn Fn(&Tensor, &KernelConfig) -> supermask_core::Result<Tensor>;

/// `pool(x)` and the gradient of `sum(pool(x) * r)`.
fn pool_run(pool: &Pool, dims: &[usize], path: KernelPath, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let n: usize = dims.iter().product();
    let x = Var::from_vec(values(n, seed), dims, &Device::Cpu).unwrap();
    let y = pool(x.as_tensor(), &kernels(path)).unwrap();
    let r = Tensor::from_vec(values(y.elem_count(), seed + 1), y.shape(), &Device::Cpu).unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(&y), flat(g.get(x.as_tensor()).unwrap()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Both max-pools, fused and reference, give identical outputs and gradients (a pool
    /// copies values, so no rounding differs; random floats have no ties).
    #[test]
    fn fused_pools_match_reference(
        n in 1usize..3, c in 1usize..4, h in 2usize..9, w in 2usize..9, seed in 0u64..1000,
    ) {
        let pools: [&Pool; 2] = [
            &|x, k| supermask_core::ops::max_pool2(x, k),
            &|x, k| supermask_core::ops::max_pool_same_stride1(x, 3, k),
        ];
        for pool in pools {
            let fused = pool_run(pool, &[n, c, h, w], KernelPath::Fused, seed);
            let reference = pool_run(pool, &[n, c, h, w], KernelPath::Reference, seed);
            prop_assert_eq!(&fused, &reference);
        }
    }
}

/// The gradient of a 2x2 max-pool is 1 at each window's maximum and 0 elsewhere (its
/// definition), on both paths: candle 0.11.1's own `max_pool2d` backward gives 0.25 there.
#[test]
fn max_pool_gradient_is_one_at_each_maximum() {
    // Windows of a 4x4 plane: maxima 5, 7, 13, 15 at flat positions 5, 7, 13, 15.
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    for path in [KernelPath::Fused, KernelPath::Reference] {
        let x = Var::from_vec(x.clone(), (1, 1, 4, 4), &Device::Cpu).unwrap();
        let y = supermask_core::ops::max_pool2(x.as_tensor(), &kernels(path)).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want: Vec<f32> = (0..16)
            .map(|i| {
                if [5, 7, 13, 15].contains(&i) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(g, want, "{path:?}");
    }
}

/// BN output and the gradients of `sum(bn(x) * r)` for the input and (in training) the scale
/// and shift, then the running statistics; after
/// one training forward (which moves the running statistics) when `train` is false, so
/// evaluation uses non-trivial statistics.
fn bn_run(
    mode: supermask_core::BnMode,
    dims: &[usize],
    path: KernelPath,
    train: bool,
    seed: u64,
) -> Vec<Vec<f32>> {
    let bn = supermask_core::BatchNorm::new("bn", dims[1], mode, &Device::Cpu).unwrap();
    let n: usize = dims.iter().product();
    let c = ctx(path, 0.2, true);
    let warm = Tensor::from_vec(
        values(n, seed + 5).iter().map(|v| v * 3.0 + 1.0).collect(),
        dims,
        &Device::Cpu,
    )
    .unwrap();
    bn.forward_t(&warm, &c).unwrap();
    let c = ctx(path, 0.2, train);
    let x = Var::from_vec(
        values(n, seed).iter().map(|v| v * 2.0 - 0.5).collect(),
        dims,
        &Device::Cpu,
    )
    .unwrap();
    let y = bn.forward_t(x.as_tensor(), &c).unwrap();
    let r = Tensor::from_vec(values(n, seed + 1), dims, &Device::Cpu).unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![flat(&y), flat(g.get(x.as_tensor()).unwrap())];
    // Scale and shift gradients exist in training (evaluation folds them into constants).
    if train {
        for (_, p) in bn.params() {
            out.push(flat(g.get(p.as_tensor()).expect("scale/shift gradient")));
        }
    }
    // The running statistics after the passes.
    for (name, t) in bn.named_tensors() {
        if name.contains("running") {
            out.push(flat(&t));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Batch norm in every mode, training and evaluation: the fused path gives the reference's
    /// outputs, gradients (input, scale, shift) and running statistics.
    #[test]
    fn fused_batch_norm_matches_reference(
        n in 1usize..5, c in 1usize..5, h in 1usize..6, train: bool, seed in 0u64..1000,
        mode in prop_oneof![
            Just(supermask_core::BnMode::None),
            Just(supermask_core::BnMode::Learnable),
            Just(supermask_core::BnMode::FrozenStats),
        ],
    ) {
        // A batch of one 1x1 sample has zero variance: the gradient through the batch
        // statistics is then dominated by rounding on both paths, not a comparison.
        prop_assume!(n * h * h > 1);
        let dims = [n, c, h, h];
        let fused = bn_run(mode, &dims, KernelPath::Fused, train, seed);
        let reference = bn_run(mode, &dims, KernelPath::Reference, train, seed);
        prop_assert_eq!(fused.len(), reference.len());
        // The input gradient through the batch statistics is a difference of terms of the
        // size of the upstream gradient times 1/std, both about 1 here (inputs of spread ~1,
        // upstream values in [-1, 1)); it can cancel far below that, so the scale is at least 1.
        for (i, (a, b)) in fused.iter().zip(&reference).enumerate() {
            close_at(&format!("{mode:?} tensor {i}"), a, b, 1.0)?;
        }
    }
}

/// `set_momentum(m)`: one training forward from the initial statistics (0, 1) leaves
/// `running = m * initial + (1 - m) * batch` (the biased batch variance), on both paths; the
/// default is Keras' 0.99, and a momentum outside [0, 1) is refused naming the layer.
#[test]
fn batch_norm_running_average_uses_its_momentum() {
    // Channel 0 holds 1, 3 (mean 2, biased variance 1); channel 1 holds 0, 4 (mean 2, 4).
    let x = Tensor::from_vec(vec![1f32, 0.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
    for path in [KernelPath::Fused, KernelPath::Reference] {
        for m in [None, Some(0.9), Some(0.0)] {
            let mut bn = supermask_core::BatchNorm::new(
                "s1.b1.bn1",
                2,
                supermask_core::BnMode::Learnable,
                &Device::Cpu,
            )
            .unwrap();
            if let Some(m) = m {
                bn.set_momentum(m).unwrap();
            }
            let mom = m.unwrap_or(0.99);
            assert_eq!(bn.momentum(), mom);
            bn.forward_t(&x, &ctx(path, 0.2, true)).unwrap();
            let stats: Vec<Vec<f32>> = bn
                .named_tensors()
                .into_iter()
                .filter(|(n, _)| n.contains("running"))
                .map(|(_, t)| t.to_vec1::<f32>().unwrap())
                .collect();
            let want_mean = [(1.0 - mom) * 2.0, (1.0 - mom) * 2.0];
            let want_var = [mom + (1.0 - mom), mom + (1.0 - mom) * 4.0];
            for (got, want) in stats.iter().zip([want_mean, want_var]) {
                for (g, w) in got.iter().zip(want) {
                    assert!((*g as f64 - w).abs() < 1e-6, "{path:?} m {mom}: {got:?}");
                }
            }
        }
    }
    let mut bn = supermask_core::BatchNorm::new(
        "stem.bn",
        2,
        supermask_core::BnMode::Learnable,
        &Device::Cpu,
    )
    .unwrap();
    let err = bn.set_momentum(1.0).unwrap_err().to_string();
    assert!(err.contains("stem.bn") && err.contains("momentum"), "{err}");
}

/// A convolution's parameter-free batch norm (mode `none`, the signed ResNets') and ELU folded
/// into the layer's op ([`Epilogue::scale`], as `Network` runs a conv -> BN -> ELU) give the
/// separate ops' outputs and gradients bit for bit, with and without the ELU, dense and masked,
/// on the fused path.
#[test]
fn folded_batch_norm_equals_the_separate_ops_bitwise() {
    let c = ctx(KernelPath::Fused, 0.2, true);
    let bn = BatchNorm::new("bn", 5, BnMode::None, &Device::Cpu).unwrap();
    let scale = bn.fixed_scale().expect("mode none has a fixed scale");
    for (masked, act) in [(true, true), (true, false), (false, true), (false, false)] {
        let mut f = LayerFactory::new(
            if masked { masking("signed") } else { dense() },
            Device::Cpu,
            3,
        );
        let mut layer = f.conv2d("conv", 3, 5, 3, 1, 1).unwrap();
        prepare(&mut layer, true, 0.3, 5);
        let x = Var::from_vec(values(2 * 3 * 6 * 6, 9), (2, 3, 6, 6), &Device::Cpu).unwrap();
        let r = Tensor::from_vec(values(2 * 5 * 6 * 6, 10), (2, 5, 6, 6), &Device::Cpu).unwrap();
        let grads = |y: Tensor| {
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let param = layer.trainable().1.as_tensor();
            [
                flat(&y),
                flat(g.get(x.as_tensor()).unwrap()),
                flat(g.get(param).unwrap()),
            ]
        };
        let elu = act.then_some(1.0);
        let folded = grads(
            layer
                .forward_epilogue(
                    x.as_tensor(),
                    &c,
                    &Epilogue {
                        scale: Some(scale),
                        elu,
                        pool2: false,
                    },
                )
                .unwrap(),
        );
        let mut y = layer.forward_t(x.as_tensor(), &c).unwrap();
        y = bn.forward_t(&y, &c).unwrap();
        if let Some(a) = elu {
            y = ops::elu(&y, a, &c.kernels).unwrap();
        }
        let separate = grads(y);
        for (what, (a, b)) in ["output", "input gradient", "parameter gradient"]
            .iter()
            .zip(folded.iter().zip(&separate))
        {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "masked {masked}, elu {act}: {what}");
            assert!(
                a.iter().any(|v| *v != 0.0),
                "masked {masked}, elu {act}: {what} all zero"
            );
        }
    }
}

/// The direct 3x3 kernel's regime (stride 1, pad 1, rows of 6 or more, dense effective
/// weight): wider layers, maps large enough for its weight gradient (16x16 and up), and
/// batches over the 16-sample gradient chunk, with each epilogue, against the reference. With
/// the sparse layout (`check` runs both), the shapes that keep few enough entries take the
/// sparse kernel over the taps of the padded input (forward) and of the padded output gradient
/// (input gradient) instead.
#[test]
fn fused_direct_conv_matches_reference() {
    let cases = [
        (20, 8, 8, 32, false, None, Some(1.0)),
        (18, 16, 8, 16, false, Some(0.7), Some(1.0)),
        (3, 8, 16, 8, true, None, Some(1.0)),
        (2, 3, 16, 28, false, Some(1.3), None),
        (17, 4, 5, 7, true, None, None),
    ];
    for (n, &(batch, c_in, c_out, h, pool2, scale, act)) in cases.iter().enumerate() {
        let seed = 40 + n as u64;
        let mut f = LayerFactory::new(masking("signed"), Device::Cpu, seed);
        let mut layer = f.conv2d("conv", c_in, c_out, 3, 1, 1).unwrap();
        prepare(&mut layer, n % 2 == 0, 0.3, seed);
        let case = Case {
            layer,
            x: vec![batch, c_in, h, h],
            scale,
            act,
            pool2,
        };
        if !pool2 || pool_windows_tie_free(&case, seed) {
            check(&case, true, seed).unwrap_or_else(|e| panic!("case {n}: {e}"));
        }
    }
}
