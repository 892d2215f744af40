//! The fused trunk's own backward (`supermask_core::tape`) against candle's backward over the
//! same forward pass: every trainable tensor's gradient must be the same number, and the tape
//! must actually take over the trunk where the net's ops are fused (otherwise the training step
//! silently falls back to candle's slower bookkeeping).

use candle_core::{Device, Tensor};
use supermask_core::{
    build_model,
    fused::{KernelConfig, KernelPath},
    registry::model_from_table,
    tape, trainable_params, ForwardCtx, MaskingConfig, Model,
};
use supermask_tests::{dense_masking as dense, signed_masking as masked, table as t};

/// Every trainable tensor's gradient of `sum(logits * r)` (name, values), and whether the
/// tape was cut, with the tape's backward (`taped`) or candle's alone.
fn gradients(
    m: &dyn Model,
    x: &Tensor,
    r: &Tensor,
    kernels: KernelConfig,
    taped: bool,
) -> (Vec<(String, Vec<f32>)>, bool) {
    let ctx = ForwardCtx::train(3, 0, kernels);
    let (logits, tape) = if taped {
        tape::record(|| m.forward_t(x, &ctx)).unwrap()
    } else {
        (m.forward_t(x, &ctx).unwrap(), tape::Tape::default())
    };
    let cut = tape.is_cut();
    let mut grads = (&logits * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    tape.backward(&mut grads).unwrap();
    let named = trainable_params(m)
        .into_iter()
        .map(|(name, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            (name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    (named, cut)
}

fn check(model: &str, input: &[usize], masking: &MaskingConfig, expect_cut: bool) {
    supermask_plugins::link();
    supermask_models::link();
    let spec = model_from_table(t(model)).unwrap();
    let m = build_model(spec.as_ref(), input, masking, &Device::Cpu, 7).unwrap();
    let mut dims = vec![3];
    dims.extend(input);
    let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
    let r = Tensor::randn(0f32, 1.0, (3, spec.classes()), &Device::Cpu).unwrap();
    // Dense and sparse effective weights: the two kernel families of the fused layers.
    for sparse_below in [0.0, 1.0] {
        let kernels = KernelConfig {
            path: KernelPath::Fused,
            sparse_below,
        };
        let (want, cut) = gradients(m.as_ref(), &x, &r, kernels, false);
        assert!(!cut, "{model}: no tape, no cut");
        let (got, cut) = gradients(m.as_ref(), &x, &r, kernels, true);
        assert_eq!(cut, expect_cut, "{model}: whether the tape takes the trunk");
        assert_eq!(got.len(), want.len());
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            assert!(
                w.iter().any(|v| *v != 0.0),
                "{model} {name}: a zero gradient tests nothing"
            );
            // `==` on f32: the same numbers (a sum started from candle's zeros may differ
            // from ours only in the sign of a zero).
            let same = g.len() == w.len() && g.iter().zip(w).all(|(a, b)| a == b);
            assert!(
                same,
                "{model} {name} (sparse_below {sparse_below}): gradients differ"
            );
        }
    }
}

#[test]
fn resnet_trunk_gradients_from_the_tape_equal_candles() {
    // The paper preset's norms (none in the blocks, learnable in the stem), and learnable ones
    // everywhere: identity and projection shortcuts, the stem pool, batch norm with parameters.
    let presets = [
        "type = \"resnet20\"\nbn = \"none\"\nstem_bn = \"learnable\"",
        "type = \"resnet20\"\nbn = \"learnable\"",
    ];
    for model in presets {
        check(model, &[3, 32, 32], &masked(), true);
        check(model, &[3, 32, 32], &dense(), true);
    }
}

#[test]
fn conv_trunk_gradients_from_the_tape_equal_candles() {
    // Convolutions with the ELU and 2x2 max-pool epilogue, then a flatten and the linear head
    // on candle's side of the cut.
    check("type = \"conv4\"", &[1, 28, 28], &masked(), true);
    check("type = \"conv2\"", &[3, 32, 32], &dense(), true);
}

#[test]
fn a_flatten_of_the_data_does_not_end_the_trunk() {
    // The FCN's leading flatten sees the images, which have no gradient: its linear layers are
    // all the tape's, cut at the logits.
    check("type = \"fcn\"", &[1, 28, 28], &masked(), true);
    check("type = \"fcn\"", &[1, 28, 28], &dense(), true);
}

#[test]
fn the_reference_path_is_never_taped() {
    supermask_plugins::link();
    supermask_models::link();
    let spec = model_from_table(t("type = \"conv2\"")).unwrap();
    let m = build_model(spec.as_ref(), &[1, 28, 28], &masked(), &Device::Cpu, 7).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 1, 28, 28), &Device::Cpu).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, spec.classes()), &Device::Cpu).unwrap();
    let kernels = KernelConfig {
        path: KernelPath::Reference,
        sparse_below: 0.0,
    };
    let (want, _) = gradients(m.as_ref(), &x, &r, kernels, false);
    let (got, cut) = gradients(m.as_ref(), &x, &r, kernels, true);
    assert!(
        !cut,
        "reference ops are not recorded, so the tape must not cut"
    );
    assert_eq!(got, want);
}
