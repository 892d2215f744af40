//! Every registered model: weight counts (Table 7, REPRODUCTION-NOTES) and a forward pass at
//! batch 2, masked and dense.

use candle_core::{DType, Device, Tensor};
use supermask_core::{
    build_model,
    fused::{KernelConfig, KernelPath},
    registry::{init_from_table, mask_from_table, model_from_table, threshold_from_table},
    ForwardCtx, MaskingConfig, Model,
};

fn t(s: &str) -> toml::Table {
    toml::from_str(s).unwrap()
}

fn masked() -> MaskingConfig {
    MaskingConfig::Masked {
        mask: mask_from_table(t("type = \"signed\"")).unwrap(),
        threshold: threshold_from_table(t("type = \"fixed\"")).unwrap(),
        weight_init: init_from_table(t("type = \"elus\"\ndist = \"signed-constant\"")).unwrap(),
        score_init: init_from_table(t("type = \"xavier-uniform\"")).unwrap(),
    }
}

fn dense() -> MaskingConfig {
    MaskingConfig::Dense {
        weight_init: init_from_table(t("type = \"he\"")).unwrap(),
    }
}

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
            let m = build_model(spec.as_ref(), &masking, &Device::Cpu, 0).unwrap();
            assert_eq!(weights(m.as_ref()), count, "{spec:?}");
            let mut dims = vec![2];
            dims.extend(spec.input_shape());
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
