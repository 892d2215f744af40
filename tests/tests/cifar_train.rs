//! The Conv2 and ResNet20 paper presets learn a generated CIFAR-format task with learnable
//! class structure to high test accuracy in a few epochs (CI's guard against a recipe or kernel
//! change that makes them diverge); the ResNet presets' augmentation and reduce-on-plateau run
//! through the same trainer.

use candle_core::Device;
use std::path::Path;
use supermask_datasets::{load_by_name, write_cifar_file, CifarDataset, Split};
use supermask_train::{config::RunConfig, Trainer};

/// Writes a learnable CIFAR-10 set: class c has a bright 8x8 square at a class-specific place
/// in one class-specific channel, on uniform noise.
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
    /// Test accuracy after the last epoch.
    test_acc: f64,
    /// Remaining weights after the last epoch.
    remaining: f64,
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
    let losses = (0..epochs)
        .map(|e| {
            let s = t.train_epoch(&data, e).unwrap();
            t.end_epoch(s.loss);
            s.loss
        })
        .collect();
    Outcome {
        losses,
        test_acc: t.evaluate(&test).unwrap().acc,
        remaining: t.layer_metrics().unwrap().0,
    }
}

/// Each class is one bright square on noise, so a net that trains gets nearly every test
/// image right within a few epochs; one that diverges stays near chance (0.1). These are the
/// paper presets unchanged but for the batch size and epochs, so a recipe or kernel change
/// that makes the Conv nets or ResNets diverge fails here.
const HIGH: f64 = 0.9;

#[test]
fn conv2_signed_preset_learns_the_task() {
    let o = train("table2-conv2-signed-elus", &[], 80, 4);
    assert!(
        o.test_acc >= HIGH,
        "test accuracy {} (losses {:?})",
        o.test_acc,
        o.losses
    );
    assert!(o.losses[3] < o.losses[0], "losses {:?}", o.losses);
    assert!(o.remaining < 0.7, "remaining {}", o.remaining);
}

/// The narrow signed ResNet20 at batch 32 needs a smaller step than the preset's lr 0.1 (set
/// for batch 128): at 0.1, the run diverged (training loss above 14, test accuracy 0.09) for
/// seed 1 with either conv kernel, and for seed 0 once the direct kernel changed the rounding,
/// so the seed-0 pass was luck. At lr 0.05 for 8 epochs, seeds 0-3 reached test accuracies
/// at least 0.9 / 0.735 / 0.79 / 0.735 (direct kernel) and 0.825 / 0.75 for seeds 0-1 with
/// im2col, with the last epoch's loss 0.47-0.73 against 2.27-2.34 in the first: this task is
/// learnable, not always to 0.9 in 8 epochs at this width (seed 1 stayed near 0.72 over 14
/// epochs; with twice the images for 6 epochs it reached 0.4; without augmentation seeds 0-3
/// gave 1.0 / 1.0 / 0.735 / 0.825, so some seeds get stuck near a loss of 0.6 whatever the
/// augmentation; at full width 1.0 / 0.735 / 1.0 / 1.0). A diverged run stays at chance
/// (0.1) with an exploding loss, which both assertions reject.
#[test]
fn narrow_resnet20_signed_preset_with_augmentation_and_plateau_learns_the_task() {
    let o = train(
        "table4-resnet20-x1-signed-elus",
        &["model.width=0.5", "optimizer.lr=0.05"],
        160,
        8,
    );
    assert!(
        o.test_acc >= 0.5,
        "test accuracy {} (losses {:?})",
        o.test_acc,
        o.losses
    );
    assert!(o.losses[7] < 0.5 * o.losses[0], "losses {:?}", o.losses);
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
