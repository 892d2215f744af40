//! A dataset registered from outside the datasets crate (here, this test crate) is found by
//! name, gives the model its input shape, loads through the training library and trains like a
//! built-in dataset.

use candle_core::Device;
use std::path::{Path, PathBuf};
use supermask_datasets::{
    dataset_names, find_dataset, register_dataset, Dataset, DatasetSource, Split,
};
use supermask_train::{config::RunConfig, run::load_data, Trainer};

/// Four classes of 1x8x8 images: class c is a bright horizontal band on rows 2c and 2c+1, on
/// uniform noise; generated, so nothing is read from the data directory.
struct Bands;

impl Bands {
    const SIDE: usize = 8;
    const CLASSES: usize = 4;
}

impl DatasetSource for Bands {
    fn name(&self) -> &'static str {
        "test-bands"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["test_bands"]
    }
    fn description(&self) -> &'static str {
        "four generated classes of 1x8x8 bands on noise (a test plugin)"
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![1, Self::SIDE, Self::SIDE])
    }
    fn classes(&self) -> Option<usize> {
        Some(Self::CLASSES)
    }
    fn load(&self, _data_dir: &Path, split: Split) -> anyhow::Result<Dataset> {
        let (n, mut s) = match split {
            Split::Train => (512, 11u64),
            Split::Test => (128, 12u64),
        };
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / (1u64 << 24) as f32
        };
        let dim = Self::SIDE * Self::SIDE;
        let mut images = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % Self::CLASSES;
            for p in 0..dim {
                let band = p / Self::SIDE / 2 == c;
                images.push(next() + if band { 1.5 } else { 0.0 });
            }
            labels.push(c as u8);
        }
        for img in images.chunks_exact_mut(dim) {
            supermask_datasets::standardize_image(img);
        }
        Ok(Dataset {
            images,
            labels,
            n,
            dim,
            shape: vec![1, Self::SIDE, Self::SIDE],
            classes: Self::CLASSES,
        })
    }
    fn fetch(&self, _data_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        anyhow::bail!("test-bands is generated; there is nothing to fetch")
    }
}

register_dataset!(Bands);

#[test]
fn a_dataset_plugin_from_another_crate_is_listed_and_found_by_alias() {
    assert!(
        dataset_names().contains(&"test-bands"),
        "{:?}",
        dataset_names()
    );
    assert_eq!(find_dataset("TEST_BANDS").unwrap().name(), "test-bands");
}

#[test]
fn a_dataset_plugin_from_another_crate_trains_through_the_library() {
    supermask_train::link_plugins();
    let preset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper/table1-fcn-baseline-he.toml");
    let text = std::fs::read_to_string(preset).unwrap();
    let sets = [
        "data.dataset=test-bands",
        "data.batch_size=32",
        "train.epochs=3",
    ];
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(&text, &sets, "table1-fcn-baseline-he").unwrap();
    assert_eq!(cfg.input_shape().unwrap(), [1, 8, 8]);
    let supermask_train::run::Splits { train, test, .. } =
        load_data(&cfg, Path::new("no-such-dir")).unwrap();
    assert_eq!((train.n, test.n, train.classes), (512, 128, 4));
    let mut t = Trainer::new(&cfg, &train.shape, &Device::Cpu).unwrap();
    t.check_data(&train).unwrap();
    for e in 0..cfg.train.epochs {
        let s = t.train_epoch(&train, e).unwrap();
        t.end_epoch(s.loss);
    }
    // Chance is 0.25; the bands are far above the noise, so a trained net gets nearly all.
    let acc = t.evaluate(&test).unwrap().acc;
    assert!(acc >= 0.9, "test accuracy {acc}");
}

#[test]
fn an_unknown_dataset_in_a_config_names_the_key_and_the_known_datasets() {
    let err = RunConfig::load(None, &["data.dataset=svhn".to_string()])
        .expect_err("svhn is not registered");
    let err = format!("{err:#}");
    assert!(
        err.contains("data.dataset") && err.contains("svhn"),
        "{err}"
    );
    assert!(err.contains("test-bands") && err.contains("mnist"), "{err}");
}
