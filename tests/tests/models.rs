//! Every registered model: weight counts (Table 7, REPRODUCTION-NOTES) and a forward pass at
//! batch 2, masked and dense.

use candle_core::{DType, Device, Tensor};
use supermask_core::{
    build_model,
    fused::{KernelConfig, KernelPath},
    registry::model_from_table,
    ForwardCtx, Model,
};
use supermask_tests::{dense_masking as dense, signed_masking as masked, table as t};

fn weights(m: &dyn Model) -> usize {
    m.layers().iter().map(|l| l.spec().numel()).sum()
}

/// `967 w^2 + 27 w + 4 w classes` (REPRODUCTION-NOTES) for the authors' ResNet20.
fn resnet20_formula(w: usize, classes: usize) -> usize {
    967 * w * w + 27 * w + 4 * w * classes
}

#[test]
fn weight_counts_and_forward_shapes() {
    supermask_plugins::link();
    supermask_models::link();
    let cases: Vec<(&str, usize, usize)> = vec![
        ("type = \"fcn\"", 266_200, 10),
        ("type = \"conv2\"", 4_300_992, 10),
        ("type = \"conv4\"", 2_425_024, 10),
        ("type = \"conv6\"", 2_261_184, 10),
        ("type = \"conv8\"", 5_275_840, 10),
        ("type = \"resnet20\"", 248_624, 10),
        ("type = \"resnet20\"\nwidth = 1.5", 558_600, 10),
        ("type = \"resnet20\"\nwidth = 2.0", 992_352, 10),
        ("type = \"resnet20\"\nwidth = 2.5", 1_549_880, 10),
        ("type = \"resnet20\"\nwidth = 3.0", 2_231_184, 10),
        ("type = \"resnet56\"", 834_992, 100),
        // Regular 18 blocks per stage: 11 + 17*18 + 40 + 17*72 + 160 + 17*288 = 6,333 w^2,
        // + 27 w + 4 w * 100 at w = 16; the paper's irregular net has 1,668,272.
        ("type = \"resnet110\"", 1_705_904, 100),
    ];
    for (spec, count, classes) in cases {
        let spec = model_from_table(t(spec)).unwrap();
        assert_eq!(spec.classes(), classes);
        for masking in [masked(), dense()] {
            let m = build_model(
                spec.as_ref(),
                &spec.paper_input(),
                &masking,
                &Device::Cpu,
                0,
            )
            .unwrap();
            assert_eq!(weights(m.as_ref()), count, "{spec:?}");
            let mut dims = vec![2];
            dims.extend(spec.paper_input());
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
            // Both kernel paths, evaluation and training mode.
            for (train, path) in [false, true]
                .into_iter()
                .flat_map(|t| [(t, KernelPath::Fused), (t, KernelPath::Reference)])
            {
                let ctx = ForwardCtx {
                    train,
                    step: 0,
                    seed: 0,
                    kernels: KernelConfig {
                        path,
                        ..Default::default()
                    },
                };
                let y = m.forward_t(&x, &ctx).unwrap();
                assert_eq!(y.dims(), [2, classes], "{spec:?}");
                assert_eq!(y.dtype(), DType::F32);
                let finite = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(finite.iter().all(|v| v.is_finite()), "{spec:?}");
            }
        }
    }
    assert_eq!(
        resnet20_formula(16, 10),
        248_624,
        "the notes' formula matches Table 4"
    );
    assert_eq!(resnet20_formula(48, 10), 2_231_184);
}

/// Models take their input shape from the data: every registered model builds for MNIST's
/// 1x28x28 (and the FCN for CIFAR's flattened 3x32x32) and maps a batch to its classes, in
/// both kernel paths; the first dense layer's width follows the input (pools round down).
#[test]
fn every_model_runs_on_the_data_shape_it_is_given() {
    supermask_plugins::link();
    supermask_models::link();
    for name in supermask_core::Registry::names(supermask_core::PluginKind::Model) {
        let spec = model_from_table(t(&format!("type = \"{name}\""))).unwrap();
        let input = if name == "fcn" {
            vec![3, 32, 32]
        } else {
            vec![1, 28, 28]
        };
        let m = build_model(spec.as_ref(), &input, &masked(), &Device::Cpu, 0).unwrap();
        let mut dims = vec![2];
        dims.extend(&input);
        let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
        for path in [KernelPath::Fused, KernelPath::Reference] {
            let ctx = ForwardCtx {
                kernels: KernelConfig {
                    path,
                    ..Default::default()
                },
                ..ForwardCtx::eval()
            };
            let y = m.forward_t(&x, &ctx).unwrap();
            assert_eq!(y.dims(), [2, spec.classes()], "{name} {path:?}");
        }
    }
    let fc1_inputs = |name: &str, input: &[usize]| {
        let spec = model_from_table(t(&format!("type = \"{name}\""))).unwrap();
        let m = build_model(spec.as_ref(), input, &dense(), &Device::Cpu, 0).unwrap();
        let layers = m.layers();
        let fc1 = layers.iter().find(|l| l.name() == "fc1").unwrap();
        fc1.spec().shape[1]
    };
    // 28 -> 14 -> 7 -> 3 -> 1 through the 2x2 pools.
    assert_eq!(fc1_inputs("conv2", &[1, 28, 28]), 64 * 14 * 14);
    assert_eq!(fc1_inputs("conv4", &[1, 28, 28]), 128 * 7 * 7);
    assert_eq!(fc1_inputs("conv6", &[1, 28, 28]), 256 * 3 * 3);
    assert_eq!(fc1_inputs("conv8", &[1, 28, 28]), 512);
    assert_eq!(fc1_inputs("fcn", &[3, 32, 32]), 3072);
    assert_eq!(fc1_inputs("conv4", &[3, 32, 32]), 128 * 8 * 8);
}

/// An input an architecture cannot take fails when the model is built, naming the layer.
#[test]
fn inputs_a_model_cannot_take_fail_at_construction_with_the_layer_name() {
    supermask_plugins::link();
    supermask_models::link();
    let cases: [(&str, &[usize], &[&str]); 6] = [
        ("type = \"conv2\"", &[784], &["conv1", "[784]"]),
        ("type = \"resnet20\"", &[784], &["stem.conv", "[784]"]),
        ("type = \"conv8\"", &[1, 8, 8], &["conv8", "too small"]),
        ("type = \"conv4\"", &[3, 2, 2], &["conv4", "too small"]),
        (
            "type = \"fcn\"\ninput = 784",
            &[3, 32, 32],
            &["fc1", "784", "3072"],
        ),
        ("type = \"fcn\"", &[0, 28, 28], &["empty dimension"]),
    ];
    for (spec, input, want) in cases {
        let spec = model_from_table(t(spec)).unwrap();
        let err = build_model(spec.as_ref(), input, &masked(), &Device::Cpu, 0)
            .err()
            .unwrap_or_else(|| panic!("{spec:?} built for {input:?}"));
        let msg = format!("{err:#}");
        for w in want {
            assert!(
                msg.contains(w),
                "{spec:?} on {input:?}: `{msg}` lacks `{w}`"
            );
        }
    }
}
