//! Conv2 and ResNet20 train on generated CIFAR-format data and lower the loss; the ResNet
//! presets' augmentation and reduce-on-plateau run through the same trainer.

use candle_core::Device;
use std::path::Path;
use supermask_cli::{config::RunConfig, Trainer};
use supermask_datasets::{load_by_name, write_cifar_file, CifarDataset, Split};

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

fn train(model: &str, masking: &str, extra: &str, epochs: usize) -> Vec<f64> {
    supermask_cli::link_plugins();
    let tmp = tempfile::tempdir().unwrap();
    make_cifar10(tmp.path(), 16, 8);
    let text = format!(
        "seed = 1\n[model]\n{model}\n[masking]\n{masking}\n\
         [data]\ndataset = \"cifar10\"\nbatch_size = 8\n{extra}\n[train]\nepochs = {epochs}\n\
         [optimizer]\ntype = \"sgdw\"\nlr = 0.05\nweight_decay = 5e-4\n"
    );
    let cfg = RunConfig::from_toml(&text, &[], "test config").unwrap();
    let data = load_by_name(tmp.path(), "cifar10", Split::Train).unwrap();
    assert_eq!((data.n, data.dim, data.classes), (80, 3072, 10));
    let mut t = Trainer::new(&cfg, &Device::Cpu).unwrap();
    t.check_data(&data).unwrap();
    (0..epochs)
        .map(|e| {
            let s = t.train_epoch(&data, e, &mut |_, _, _| {}).unwrap();
            t.end_epoch(s.loss);
            s.loss
        })
        .collect()
}

const SIGNED: &str = "mode = \"masked\"\nmask = { type = \"signed\" }\n\
    threshold = { type = \"initial-rate\", rate = 0.3 }\n\
    weight_init = { type = \"elus\", variant = \"scaled-he\", gain = 1.7320508075688772, dist = \"signed-constant\" }\n\
    score_init = { type = \"xavier-uniform\" }";

#[test]
fn conv2_signed_lowers_the_loss() {
    let losses = train("type = \"conv2\"", SIGNED, "", 3);
    assert!(losses[2] < 0.8 * losses[0], "losses {losses:?}");
}

#[test]
fn resnet20_signed_with_augmentation_and_plateau_lowers_the_loss() {
    let losses = train(
        "type = \"resnet20\"\nbn = \"none\"\nstem_bn = \"learnable\"",
        SIGNED,
        "augment = true\n[schedule]\ntype = \"reduce-on-plateau\"\nfactor = 0.2\npatience = 15",
        3,
    );
    assert!(losses[2] < 0.9 * losses[0], "losses {losses:?}");
}

#[test]
fn resnet20_dense_learnable_bn_lowers_the_loss() {
    let losses = train(
        "type = \"resnet20\"\nbn = \"learnable\"",
        "mode = \"dense\"\nweight_init = { type = \"he\", dist = \"uniform\" }",
        "",
        3,
    );
    assert!(losses[2] < 0.9 * losses[0], "losses {losses:?}");
}
