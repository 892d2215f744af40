//! Layer, model-construction and optimizer tests.

use candle_core::{Device, Tensor, Var};
use supermask_core::{
    build_model,
    optim::{Optimizer, OptimizerConfig, Schedule},
    registry::{init_from_table, mask_from_table, threshold_from_table},
    ForwardCtx, Layer, LayerFactory, LayerSpec, MaskingConfig,
};

fn table(s: &str) -> toml::Table {
    toml::from_str(s).unwrap()
}

fn masked() -> MaskingConfig {
    supermask_plugins::link();
    MaskingConfig::Masked {
        mask: mask_from_table(table("type = \"signed\"")).unwrap(),
        threshold: threshold_from_table(table("type = \"fixed\"")).unwrap(),
        weight_init: init_from_table(table("type = \"elus\"\ndist = \"signed-constant\"")).unwrap(),
        score_init: init_from_table(table("type = \"xavier-uniform\"")).unwrap(),
    }
}

#[test]
fn wrong_shapes_fail_with_the_layer_name() {
    let fc = LayerSpec::linear("fc2", 300, 100).unwrap();
    let err = fc.output_shape(&[299]).unwrap_err().to_string();
    assert!(err.contains("fc2") && err.contains("[300]"), "{err}");
    let conv = LayerSpec::conv2d("conv3", 64, 128, 3, 1, 1).unwrap();
    let err = conv.output_shape(&[32, 16, 16]).unwrap_err().to_string();
    assert!(err.contains("conv3"), "{err}");
    assert_eq!(conv.output_shape(&[64, 16, 16]).unwrap(), [128, 16, 16]);
    let strided = LayerSpec::conv2d("down", 16, 32, 1, 2, 0).unwrap();
    assert_eq!(strided.output_shape(&[16, 32, 32]).unwrap(), [32, 16, 16]);
    assert!(LayerSpec::linear("zero", 0, 3)
        .unwrap_err()
        .to_string()
        .contains("zero"));
}

/// Conv fans follow REPRODUCTION-NOTES: fan_in = k*k*c_in, fan_out = k*k*c_out.
#[test]
fn conv_fans() {
    let f = LayerSpec::conv2d("c", 3, 64, 3, 1, 1).unwrap().fans();
    assert_eq!((f.fan_in, f.fan_out), (27, 576));
}

/// A masked conv layer from the factory runs forward with the "same" output shape and its
/// scores receive a gradient of the weight's shape.
#[test]
fn masked_conv_layer_forward_and_score_gradient() {
    let mut f = LayerFactory::new(masked(), Device::Cpu, 0);
    let Layer::Masked(mut l) = f.conv2d("conv1", 3, 8, 3, 1, 1).unwrap() else {
        panic!()
    };
    l.set_weight(Tensor::ones((8, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    l.set_taus(supermask_core::Taus {
        neg: -0.01,
        pos: 0.01,
    })
    .unwrap();
    let layer = Layer::Masked(l);
    let x = Tensor::ones((2, 3, 10, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    let ctx = ForwardCtx::train(0, 0, Default::default());
    let y = layer.forward_t(&x, &ctx).unwrap();
    assert_eq!(y.dims(), [2, 8, 10, 10]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let (_, scores) = layer.trainable();
    assert_eq!(g.get(scores.as_tensor()).unwrap().dims(), [8, 3, 3, 3]);
}

#[test]
fn duplicate_layer_names_are_rejected() {
    let mut f = LayerFactory::new(masked(), Device::Cpu, 0);
    f.linear("fc1", 4, 3).unwrap();
    let err = f.linear("fc1", 3, 2).unwrap_err().to_string();
    assert!(err.contains("fc1"), "{err}");
}

/// ELUS (eq. 3) draws each layer's signed constant from that layer's initial zero share p0:
/// |W| = sqrt(1.5 / (fan_in (1 - p0))) with p0 measured from the initial mask.
#[test]
fn elus_uses_each_layers_initial_zero_share() {
    supermask_models::link();
    let spec = supermask_core::registry::model_from_table(table("type = \"fcn\"")).unwrap();
    let model = build_model(
        spec.as_ref(),
        &spec.paper_input(),
        &masked(),
        &Device::Cpu,
        3,
    )
    .unwrap();
    for layer in model.layers() {
        let Layer::Masked(m) = layer else { panic!() };
        let [_, zero, _] = layer.mask_counts().unwrap();
        let p0 = zero as f64 / m.spec.numel() as f64;
        let want = (1.5 / (m.spec.fans().fan_in as f64 * (1.0 - p0))).sqrt() as f32;
        let w = m
            .weight()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            w.iter().all(|v| (v.abs() - want).abs() < 1e-6 * want),
            "{}",
            m.spec.name
        );
        assert!(p0 > 0.0 && p0 < 0.5, "{}: p0 {p0}", m.spec.name);
    }
}

/// Two SGDW steps against the Keras/TF-Addons formulas computed by hand:
/// v1 = -lr g1; p1 = p0 - wd p0 + (m v1 - lr g1); v2 = m v1 - lr g2; p2 = p1 - wd p1 + m v2 - lr g2.
#[test]
fn sgdw_matches_hand_computation() {
    let (lr, m, wd) = (0.1f64, 0.9f64, 0.01f64);
    let cfg = OptimizerConfig::Sgdw {
        lr,
        momentum: m,
        nesterov: true,
        weight_decay: wd,
    };
    let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(cfg, vec!["p".into()]);
    // loss = sum(c * p) has gradient c.
    let c = Tensor::new(&[0.5f32, 3.0], &Device::Cpu).unwrap();
    let mut want = [1.0f64, -2.0];
    let mut v = [0.0f64; 2];
    for step in 0..2 {
        let g = p
            .as_tensor()
            .mul(&c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&[&p], &g, 1.0, 1.0).unwrap();
        for i in 0..2 {
            let gi = [0.5, 3.0][i];
            v[i] = if step == 0 {
                -lr * gi
            } else {
                m * v[i] - lr * gi
            };
            want[i] = want[i] - wd * want[i] + (m * v[i] - lr * gi);
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - want[i]).abs() < 1e-6,
                "step {step}: {got:?} vs {want:?}"
            );
        }
    }
}

/// The staircase schedule multiplies by `rate` once per `steps` steps (TF ExponentialDecay with
/// staircase=True).
#[test]
fn staircase_schedule() {
    let s = Schedule::StaircaseExponential {
        rate: 0.96,
        steps: 3900,
    };
    let at = |step| supermask_core::optim::Progress {
        step,
        steps_per_epoch: 390,
        epochs: 100,
    };
    assert_eq!(s.factor(at(0)), 1.0);
    assert_eq!(s.factor(at(3899)), 1.0);
    assert!((s.factor(at(3900)) - 0.96).abs() < 1e-12);
    assert!((s.factor(at(39_000)) - 0.96f64.powi(10)).abs() < 1e-12);
}

/// The cosine schedule is hidden-networks' `cosine_lr`: `0.5 (1 + cos(pi e / E))`, set at the
/// start of each epoch `e` (so constant within an epoch) and never 0.
#[test]
fn cosine_schedule_is_set_per_epoch() {
    let at = |step| supermask_core::optim::Progress {
        step,
        steps_per_epoch: 10,
        epochs: 4,
    };
    let f = |step| Schedule::Cosine.factor(at(step));
    assert_eq!(f(0), 1.0);
    assert_eq!(f(9), 1.0);
    // Epoch 1 of 4: 0.5 (1 + cos(pi / 4)) = 0.8535533905932737.
    assert!((f(10) - 0.853_553_390_593_273_7).abs() < 1e-15);
    assert!((f(19) - f(10)).abs() == 0.0);
    assert!((f(20) - 0.5).abs() < 1e-15);
    // The last epoch (3 of 4): 0.5 (1 + cos(3 pi / 4)) = 0.14644660940672627 > 0.
    assert!((f(39) - 0.146_446_609_406_726_27).abs() < 1e-15);
}

#[test]
fn masking_config_reads_from_toml() {
    supermask_plugins::link();
    let cfg: MaskingConfig = toml::from_str(
        "mode = \"masked\"\nmask = { type = \"binary\" }\nthreshold = { type = \"fixed\" }\n\
         weight_init = { type = \"he\" }\nscore_init = { type = \"xavier-uniform\" }",
    )
    .unwrap();
    let MaskingConfig::Masked { mask, .. } = &cfg else {
        panic!()
    };
    assert_eq!(mask.range(), supermask_core::MaskRange::Binary);
}

/// Finite-difference check of the masked convolution (stride 2, padding 1, 3x3) in f64:
/// the autograd gradient w.r.t. the input equals central differences of
/// `f(x) = sum(G * conv(x, W * g(M)))`, and the gradient w.r.t. the scores equals central
/// differences of `h(m) = sum(G * conv(x, W * m))` at `m = g(M)` (the straight-through
/// estimator treats g as the identity).
#[test]
fn masked_conv_finite_difference_gradients() {
    use candle_core::DType;
    let dev = Device::Cpu;
    let spec = LayerSpec::conv2d("c", 2, 3, 3, 2, 1).unwrap();
    let x = Tensor::randn(0f64, 1.0, (1, 2, 5, 5), &dev).unwrap();
    let w = Tensor::randn(0f64, 1.0, (3, 2, 3, 3), &dev).unwrap();
    let m0 = Tensor::randn(0f64, 0.05, (3, 2, 3, 3), &dev).unwrap();
    let g_up = Tensor::randn(0f64, 1.0, (1, 3, 3, 3), &dev).unwrap();
    let taus = supermask_core::Taus {
        neg: -0.01,
        pos: 0.01,
    };
    let mask = mask_from_table(table("type = \"signed\"")).unwrap();
    let ctx = supermask_core::MaskCtx::eval();

    let xv = Var::from_tensor(&x).unwrap();
    let mv = Var::from_tensor(&m0).unwrap();
    let eff = w
        .mul(&supermask_core::mask::apply(mask.as_ref(), mv.as_tensor(), taus, &ctx).unwrap())
        .unwrap();
    let f = spec
        .apply(xv.as_tensor(), &eff)
        .unwrap()
        .mul(&g_up)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = f.backward().unwrap();
    let gx = grads
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let gm = grads
        .get(mv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();

    let hard = mask.hard(&m0, taus, &ctx).unwrap();
    let value = |x: &Tensor, m: &Tensor| -> f64 {
        spec.apply(x, &w.mul(m).unwrap())
            .unwrap()
            .mul(&g_up)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let eps = 1e-5;
    let bump = |t: &Tensor, i: usize, d: f64| -> Tensor {
        let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        v[i] += d;
        Tensor::from_vec(v, t.dims(), &dev).unwrap()
    };
    for (i, g) in gx.iter().enumerate() {
        let fd = (value(&bump(&x, i, eps), &hard) - value(&bump(&x, i, -eps), &hard)) / (2.0 * eps);
        assert!(
            (fd - g).abs() < 1e-6 * fd.abs().max(1.0),
            "dx[{i}]: fd {fd} vs {g}"
        );
    }
    for (i, g) in gm.iter().enumerate() {
        let fd = (value(&x, &bump(&hard, i, eps)) - value(&x, &bump(&hard, i, -eps))) / (2.0 * eps);
        assert!(
            (fd - g).abs() < 1e-6 * fd.abs().max(1.0),
            "dM[{i}]: fd {fd} vs {g}"
        );
    }
    assert_eq!(hard.dtype(), DType::F64);
}

/// Reduce-on-plateau as Keras: after `patience` epochs without an improvement larger than
/// `min_delta`, the factor is multiplied by `factor` and the wait restarts.
#[test]
fn reduce_on_plateau() {
    let s = Schedule::ReduceOnPlateau {
        factor: 0.2,
        patience: 2,
        min_delta: 1e-4,
    };
    let mut st = supermask_core::optim::PlateauState::default();
    for (loss, want) in [
        (1.0, 1.0),
        (0.5, 1.0),
        (0.5, 1.0),
        (0.49995, 0.2),
        (0.4, 0.2),
        (0.4, 0.2),
        (0.4, 0.04),
    ] {
        s.end_epoch(&mut st, loss);
        assert!((st.factor - want).abs() < 1e-12, "loss {loss}: {st:?}");
    }
    assert_eq!(
        s.factor(supermask_core::optim::Progress {
            step: 10_000,
            steps_per_epoch: 100,
            epochs: 10
        }),
        1.0,
        "plateau does not depend on the step"
    );
}
