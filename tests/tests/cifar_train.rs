//! The Conv2 and ResNet20 paper presets learn a generated CIFAR-format task with learnable
//! class structure in a few epochs, Conv2 to 0.9 test accuracy and the narrow signed ResNet20
//! to 0.65, the level PyTorch's run of the same recipe reaches on the same bytes (CI's guard
//! against a recipe or kernel change that makes them diverge, where accuracy stays at 0.1); the
//! ResNet presets' augmentation and reduce-on-plateau run through the same trainer.

use candle_core::Device;
use std::path::Path;
use supermask_datasets::{load_by_name, write_cifar_file, CifarDataset, Split};
use supermask_train::{config::RunConfig, Trainer};

/// Writes a learnable CIFAR-10 set: class c has a bright 8x8 square at a class-specific place
/// in one class-specific channel, on uniform noise (`benches/python/gen_squares.py` writes the
/// same bytes for the PyTorch referee).
fn make_cifar10(root: &Path, per_file: usize, test: usize) {
    let dir = root.join("cifar-10-batches-bin");
    let mut s = 7u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let mut file = |name: &str, n: usize| {
        let mut pixels = Vec::with_capacity(n * 3072);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let c = (next() % 10) as usize;
            labels.push(c as u8);
            let (ch, y0, x0) = (c % 3, (c / 3) * 8, (c % 4) * 8);
            for k in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let on = k == ch && (y0..y0 + 8).contains(&y) && (x0..x0 + 8).contains(&x);
                        pixels.push(if on { 220 } else { (next() % 80) as u8 });
                    }
                }
            }
        }
        write_cifar_file(&dir.join(name), CifarDataset::Cifar10, &pixels, &labels).unwrap();
    };
    for i in 1..=5 {
        file(&format!("data_batch_{i}.bin"), per_file);
    }
    file("test_batch.bin", test);
}

fn preset(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/paper")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(path).unwrap()
}

/// What a few epochs of training reached.
struct Outcome {
    /// Mean training loss per epoch.
    losses: Vec<f64>,
    /// Test accuracy after each epoch.
    test_accs: Vec<f64>,
    /// Remaining weights after the last epoch.
    remaining: f64,
}

impl Outcome {
    /// Test accuracy after the last epoch.
    fn test_acc(&self) -> f64 {
        *self.test_accs.last().unwrap()
    }
}

/// Trains a paper preset (with `sets` overrides) for `epochs` epochs on the generated task:
/// `5 * per_file` training and 200 test images.
fn train(preset_name: &str, sets: &[&str], per_file: usize, epochs: usize) -> Outcome {
    supermask_train::link_plugins();
    let tmp = tempfile::tempdir().unwrap();
    make_cifar10(tmp.path(), per_file, 200);
    let mut overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    overrides.extend([
        "data.batch_size=32".into(),
        format!("train.epochs={epochs}"),
    ]);
    let cfg = RunConfig::from_toml(&preset(preset_name), &overrides, preset_name).unwrap();
    let data = load_by_name(tmp.path(), "cifar10", Split::Train).unwrap();
    let test = load_by_name(tmp.path(), "cifar10", Split::Test).unwrap();
    assert_eq!((data.n, data.dim, data.classes), (5 * per_file, 3072, 10));
    let mut t = Trainer::new(&cfg, &data.shape, &Device::Cpu).unwrap();
    t.check_data(&data).unwrap();
    let (mut losses, mut test_accs) = (Vec::new(), Vec::new());
    for e in 0..epochs {
        let s = t.train_epoch(&data, e).unwrap();
        t.end_epoch(s.loss);
        losses.push(s.loss);
        test_accs.push(t.evaluate(&test).unwrap().acc);
    }
    Outcome {
        losses,
        test_accs,
        remaining: t.layer_metrics().unwrap().0,
    }
}

/// Each class is one bright square on noise, so Conv2, whose fully connected head sees where
/// the square lies, gets nearly every test image right within a few epochs; a net that
/// diverges stays near chance (0.1). These are the paper presets unchanged but for the batch
/// size and epochs, so a recipe or kernel change that makes the Conv nets diverge fails here.
const HIGH: f64 = 0.9;

#[test]
fn conv2_signed_preset_learns_the_task() {
    let o = train("table2-conv2-signed-elus", &[], 80, 4);
    assert!(
        o.test_acc() >= HIGH,
        "test accuracy {} (losses {:?})",
        o.test_acc(),
        o.losses
    );
    assert!(o.losses[3] < o.losses[0], "losses {:?}", o.losses);
    assert!(o.remaining < 0.7, "remaining {}", o.remaining);
}

/// The narrow signed ResNet20 at batch 32 runs at lr 0.05, not the preset's 0.1 (set for batch
/// 128): at 0.1 it diverged (training loss above 14, test accuracy 0.09) on seed 1, and on
/// seed 0 once the direct kernel changed the rounding.
///
/// At lr 0.05 this recipe does not reach 0.9 on every seed, in our implementation or in
/// PyTorch's (`benches/python/torch_train.py`, the same recipe on the same bytes written by
/// `benches/python/gen_squares.py`; docs/results/conv-real-data.md, "CI's generated task"):
/// final test accuracies for seeds 0-3 were 1.0 / 0.735 / 0.79 / 0.735 here and 0.685 / 0.755
/// / 0.755 / 1.0 in PyTorch. The runs that stop near 0.75 merge the classes drawn in the same
/// channel, which differ only by position: a net that averages over the whole map sees
/// position only through the borders, and the flips move it. Both implementations also show
/// one-epoch loss spikes (PyTorch seed 1: 0.90 -> 1.87, test accuracy 0.2, then back to 0.755).
/// So the bounds take the best of the last three epochs: test accuracy at least 0.65 (every
/// run above reached 0.735 or more by that rule; chance is 0.1, where a diverged run stays)
/// and a training loss below half the first epoch's.
#[test]
fn narrow_resnet20_signed_preset_with_augmentation_and_plateau_learns_the_task() {
    let o = train(
        "table4-resnet20-x1-signed-elus",
        &["model.width=0.5", "optimizer.lr=0.05"],
        160,
        8,
    );
    let best_acc = o.test_accs[5..].iter().copied().fold(0.0, f64::max);
    let best_loss = o.losses[5..].iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        best_acc >= 0.65,
        "test accuracies {:?} (losses {:?})",
        o.test_accs,
        o.losses
    );
    assert!(best_loss < 0.5 * o.losses[0], "losses {:?}", o.losses);
}

/// The dense baseline's learnable batch norms evaluate with running statistics (Keras'
/// momentum 0.99), which lag far behind after 52 steps, so this asserts the training loss.
#[test]
fn narrow_resnet20_dense_learnable_bn_lowers_the_loss() {
    let o = train(
        "table4-resnet20-x1-baseline-he",
        &["model.width=0.5"],
        80,
        4,
    );
    assert!(o.losses[3] < 0.5 * o.losses[0], "losses {:?}", o.losses);
}
