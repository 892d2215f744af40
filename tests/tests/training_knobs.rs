//! Training knobs outside the optimizer: the learning-rate warm-up (`[warmup]`: its factor
//! follows its formula, it scales the learning rate, not SGDW's decay, on exactly the warm-up
//! steps) and the batch-norm momentum (`train.bn_momentum` reaches every batch norm); bad
//! values are refused naming the key.

use candle_core::Device;
use supermask_core::{
    model::trainable_params,
    optim::{Warmup, WarmupShape},
};
use supermask_datasets::{load_by_name, write_learnable_mnist, Split};
use supermask_train::{config::RunConfig, Trainer};

/// `linear`: `start + (1 - start) * step / steps`; `constant`: `start`; 1 from `steps` on.
#[test]
fn warmup_factor_follows_its_formula() {
    let lin = Warmup {
        steps: 4,
        start: 0.2,
        shape: WarmupShape::Linear,
    };
    let want = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0];
    for (s, w) in want.iter().enumerate() {
        assert!((lin.factor(s as u64) - w).abs() < 1e-12, "step {s}");
    }
    let con = Warmup {
        steps: 400,
        start: 0.1,
        shape: WarmupShape::Constant,
    };
    assert_eq!(
        (con.factor(0), con.factor(399), con.factor(400)),
        (0.1, 0.1, 1.0)
    );
    assert!(Warmup::default().is_off());
    assert_eq!(Warmup::default().factor(0), 1.0);
}

const FCN: &str = "seed = 3\n[model]\ntype = \"fcn\"\nhidden = [16]\n\
    [masking]\nmode = \"dense\"\nweight_init = { type = \"he\" }\n\
    [data]\ndataset = \"mnist\"\nbatch_size = 32\nshuffle = false\n\
    [train]\nepochs = 1\n\
    [optimizer]\ntype = \"sgdw\"\nlr = 0.1\nmomentum = 0.9\nnesterov = true\nweight_decay = 1e-3\n";

fn params_after_one_epoch(sets: &[&str], root: &std::path::Path) -> (Vec<Vec<f32>>, f64) {
    supermask_train::link_plugins();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(FCN, &sets, "warmup test").unwrap();
    let data = load_by_name(root, "mnist", Split::Train).unwrap();
    let mut t = Trainer::new(&cfg, &data.shape, &Device::Cpu).unwrap();
    t.train_epoch(&data, 0).unwrap();
    let params = trainable_params(t.model())
        .into_iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    (params, t.lr())
}

/// A constant warm-up at factor 1/2 over the 3 steps of an epoch trains exactly as half the
/// learning rate with the same weight decay (SGDW's decay is not warmed up), and the run's
/// rate is the full one once the warm-up is over; a warm-up of one step fewer differs.
#[test]
fn warmup_scales_the_learning_rate_of_its_steps_only() {
    let tmp = tempfile::tempdir().unwrap();
    write_learnable_mnist(tmp.path(), 96, 10).unwrap();
    let warm = [
        "warmup.steps=3",
        "warmup.start=0.5",
        "warmup.shape=\"constant\"",
    ];
    let (a, lr_a) = params_after_one_epoch(&warm, tmp.path());
    let (b, lr_b) = params_after_one_epoch(&["optimizer.lr=0.05"], tmp.path());
    assert_eq!(a, b, "warmed-up steps differ from steps at half the rate");
    assert_eq!((lr_a, lr_b), (0.1, 0.05));
    let short = [
        "warmup.steps=2",
        "warmup.start=0.5",
        "warmup.shape=\"constant\"",
    ];
    let (c, _) = params_after_one_epoch(&short, tmp.path());
    assert_ne!(a, c, "the third step was not at the full rate");
}

#[test]
fn bad_warmup_values_are_refused_by_key() {
    supermask_train::link_plugins();
    for bad in ["warmup.start=0", "warmup.start=1.5", "warmup.start=nan"] {
        let err = RunConfig::from_toml(FCN, &[bad.to_string()], "cfg")
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(
            format!("{err:#}").contains("warmup.start"),
            "{bad}: {err:#}"
        );
    }
    let err = RunConfig::from_toml(FCN, &["warmup.shape=\"cosine\"".to_string()], "cfg")
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("cosine"), "{err:#}");
}

const RESNET: &str = "[model]\ntype = \"resnet20\"\nwidth = 0.25\nclasses = 10\n\
    bn = \"learnable\"\nstem_bn = \"learnable\"\n\
    [masking]\nmode = \"dense\"\nweight_init = { type = \"he\" }\n\
    [data]\ndataset = \"fashion-mnist\"\nbatch_size = 8\n[train]\nepochs = 1\n\
    [optimizer]\ntype = \"sgdw\"\nlr = 0.1\nweight_decay = 0.0\n";

/// Every batch norm of a ResNet (stem, blocks) gets `train.bn_momentum`; without it, Keras'
/// 0.99 (the authors' code); 1 and above are refused.
#[test]
fn bn_momentum_reaches_every_batch_norm() {
    supermask_train::link_plugins();
    for (sets, want) in [
        (vec![], 0.99),
        (vec!["train.bn_momentum=0.9".to_string()], 0.9),
    ] {
        let cfg = RunConfig::from_toml(RESNET, &sets, "resnet").unwrap();
        let t = Trainer::new(&cfg, &[1, 28, 28], &Device::Cpu).unwrap();
        let norms = t.model().norms();
        assert_eq!(norms.len(), 22, "stem, 2 per block of 9, 3 shortcuts");
        assert!(norms.iter().all(|n| n.momentum() == want), "{sets:?}");
    }
    let err = RunConfig::from_toml(RESNET, &["train.bn_momentum=1.0".to_string()], "resnet")
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("train.bn_momentum"), "{err:#}");
}
