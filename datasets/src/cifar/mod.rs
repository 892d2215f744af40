//! CIFAR-10 / CIFAR-100 in the official binary formats: reader, writer, loader and fetcher.
//!
//! Layout after extracting the official archives into the data dir:
//!
//! * CIFAR-10: `<data_dir>/cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin`;
//!   each record is 1 label byte followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
//!   each 32x32 row-major), 10000 records per file.
//! * CIFAR-100: `<data_dir>/cifar-100-binary/{train,test}.bin`; each record is 1 coarse label
//!   byte, 1 fine label byte and 3072 pixel bytes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

mod fetch;

pub use fetch::fetch_cifar;

use crate::{standardize_image, write_atomic, Dataset, DatasetSource, Split};

/// Pixel bytes per CIFAR image (3 x 32 x 32).
const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarDataset {
    /// CIFAR-10: 32x32 colour images, 10 classes (50000 train, 10000 test).
    Cifar10,
    /// CIFAR-100: 32x32 colour images, 100 fine classes in 20 coarse superclasses.
    Cifar100,
}

impl DatasetSource for CifarDataset {
    fn name(&self) -> &'static str {
        CifarDataset::name(self)
    }
    fn aliases(&self) -> &'static [&'static str] {
        match self {
            CifarDataset::Cifar10 => &["cifar-10", "cifar_10"],
            CifarDataset::Cifar100 => &["cifar-100", "cifar_100"],
        }
    }
    fn description(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "CIFAR-10, 3x32x32, 10 classes (official binary files)",
            CifarDataset::Cifar100 => {
                "CIFAR-100, 3x32x32, 100 fine classes (official binary files)"
            }
        }
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![3, 32, 32])
    }
    fn classes(&self) -> Option<usize> {
        Some(CifarDataset::classes(self))
    }
    fn load(&self, data_dir: &Path, split: Split) -> Result<Dataset> {
        load_cifar(data_dir, *self, split)
    }
    fn fetch(&self, data_dir: &Path) -> Result<Vec<PathBuf>> {
        fetch_cifar(*self, data_dir)
    }
}

crate::register_dataset!(CifarDataset::Cifar10);
crate::register_dataset!(CifarDataset::Cifar100);

impl CifarDataset {
    /// Canonical name: `"cifar10"` or `"cifar100"`.
    pub fn name(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "cifar10",
            CifarDataset::Cifar100 => "cifar100",
        }
    }

    /// Both CIFAR datasets.
    pub fn all() -> &'static [CifarDataset] {
        &[CifarDataset::Cifar10, CifarDataset::Cifar100]
    }

    /// Number of classes of the loaded labels: 10, or 100 (fine labels) for CIFAR-100.
    pub fn classes(&self) -> usize {
        match self {
            CifarDataset::Cifar10 => 10,
            CifarDataset::Cifar100 => 100,
        }
    }

    /// Bytes per record in the binary files: 3073 (CIFAR-10) or 3074 (CIFAR-100).
    pub fn record_size(&self) -> usize {
        self.label_bytes() + PIXELS
    }

    /// URL of the official binary archive.
    pub fn url(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            CifarDataset::Cifar100 => "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        }
    }

    /// md5 (lower-case hex) of the official binary archive.
    pub fn archive_md5(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "c32a1d4ab5d03f1284b67883e8d87530",
            CifarDataset::Cifar100 => "03b5dce01913d631647c71ecec9e9cb8",
        }
    }

    /// File name of the official archive (last component of [`CifarDataset::url`]).
    fn archive_name(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "cifar-10-binary.tar.gz",
            CifarDataset::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    /// Directory created by extracting the archive.
    fn subdir(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "cifar-10-batches-bin",
            CifarDataset::Cifar100 => "cifar-100-binary",
        }
    }

    fn label_bytes(&self) -> usize {
        match self {
            CifarDataset::Cifar10 => 1,
            CifarDataset::Cifar100 => 2,
        }
    }

    /// Human name used in messages: `CIFAR-10` or `CIFAR-100`.
    fn display(&self) -> &'static str {
        match self {
            CifarDataset::Cifar10 => "CIFAR-10",
            CifarDataset::Cifar100 => "CIFAR-100",
        }
    }

    /// (file name, size in bytes) of every file of the official release, train files first.
    fn official_files(&self) -> Vec<(String, u64)> {
        match self {
            CifarDataset::Cifar10 => (1..=5)
                .map(|i| format!("data_batch_{i}.bin"))
                .chain(std::iter::once("test_batch.bin".to_string()))
                .map(|f| (f, 10_000 * 3073))
                .collect(),
            CifarDataset::Cifar100 => vec![
                ("train.bin".to_string(), 50_000 * 3074),
                ("test.bin".to_string(), 10_000 * 3074),
            ],
        }
    }
}

/// Files of one split in the official layout, in load order (CIFAR-10 train:
/// `data_batch_1.bin` .. `data_batch_5.bin`).
pub fn cifar_files(data_dir: &Path, ds: CifarDataset, split: Split) -> Vec<PathBuf> {
    let dir = data_dir.join(ds.subdir());
    match (ds, split) {
        (CifarDataset::Cifar10, Split::Train) => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        (CifarDataset::Cifar10, Split::Test) => vec![dir.join("test_batch.bin")],
        (CifarDataset::Cifar100, Split::Train) => vec![dir.join("train.bin")],
        (CifarDataset::Cifar100, Split::Test) => vec![dir.join("test.bin")],
    }
}

/// Every file of both splits (train first), as [`cifar_files`] names them.
fn all_files(data_dir: &Path, ds: CifarDataset) -> Vec<PathBuf> {
    let mut files = cifar_files(data_dir, ds, Split::Train);
    files.extend(cifar_files(data_dir, ds, Split::Test));
    files
}

/// How to get the data by hand, on one line.
fn manual_instructions(data_dir: &Path, ds: CifarDataset) -> String {
    format!(
        "download {} (md5 {}) and extract it with `tar xzf {} -C {}`",
        ds.url(),
        ds.archive_md5(),
        ds.archive_name(),
        data_dir.display()
    )
}

/// Reads one CIFAR binary file: `(pixels of n * 3072 bytes, n labels)`.
///
/// Labels are the CIFAR-10 label, or the fine label for CIFAR-100 (the coarse label is checked
/// but dropped). Every problem (unreadable, empty, truncated, label out of range) is a one-line
/// error naming the file.
pub fn read_cifar_file(path: &Path, ds: CifarDataset) -> Result<(Vec<u8>, Vec<u8>)> {
    let p = path.display();
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
    let rec = ds.record_size();
    if bytes.is_empty() {
        bail!(
            "{p}: empty file (0 bytes); a {} binary file holds {rec}-byte records",
            ds.display()
        );
    }
    if bytes.len() % rec != 0 {
        bail!(
            "{p}: truncated: {} bytes is not a whole number of {rec}-byte records ({} whole \
             records and {} extra bytes); is this a complete {} binary file?",
            bytes.len(),
            bytes.len() / rec,
            bytes.len() % rec,
            ds.display()
        );
    }
    let n = bytes.len() / rec;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = match ds {
            CifarDataset::Cifar10 => r[0],
            CifarDataset::Cifar100 => {
                let (coarse, fine) = (r[0], r[1]);
                if coarse >= 20 {
                    bail!(
                        "{p}: label out of range: coarse label {coarse} in record {i} but \
                         CIFAR-100 has 20 coarse classes"
                    );
                }
                fine
            }
        };
        if usize::from(label) >= ds.classes() {
            let kind = if ds == CifarDataset::Cifar100 {
                "fine label"
            } else {
                "label"
            };
            bail!(
                "{p}: label out of range: {kind} {label} in record {i} but {} has {} classes",
                ds.display(),
                ds.classes()
            );
        }
        labels.push(label);
        pixels.extend_from_slice(&r[ds.label_bytes()..]);
    }
    Ok((pixels, labels))
}

/// Writes a CIFAR binary file atomically (temp file in the same directory, then rename); used
/// by tests to generate small files. `pixels.len()` must be `labels.len() * 3072` and each label
/// `< classes`. For CIFAR-100 the coarse label written is `fine / 5`.
pub fn write_cifar_file(path: &Path, ds: CifarDataset, pixels: &[u8], labels: &[u8]) -> Result<()> {
    let p = path.display();
    if labels.len().checked_mul(PIXELS) != Some(pixels.len()) {
        bail!(
            "{p}: cannot write: {} labels need {} pixel bytes but {} were given",
            labels.len(),
            labels.len().saturating_mul(PIXELS),
            pixels.len()
        );
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= ds.classes())
    {
        bail!(
            "{p}: cannot write: label {l} at index {i} but {} has {} classes",
            ds.display(),
            ds.classes()
        );
    }
    let mut buf = Vec::with_capacity(labels.len() * ds.record_size());
    for (&l, img) in labels.iter().zip(pixels.chunks_exact(PIXELS)) {
        if ds == CifarDataset::Cifar100 {
            buf.push(l / 5);
        }
        buf.push(l);
        buf.extend_from_slice(img);
    }
    write_atomic(path, &buf)
}

/// Loads one split: images per-image standardized with [`standardize_image`] over all 3072
/// values, shape `[3, 32, 32]` (channels-first, the byte order of the records), dim 3072,
/// classes 10 or 100 (CIFAR-100 uses the fine label). The CIFAR-10 train split concatenates
/// `data_batch_1.bin` .. `data_batch_5.bin` in order.
///
/// Missing files give one error naming each of them and how to provide them.
pub fn load_cifar(data_dir: &Path, ds: CifarDataset, split: Split) -> Result<Dataset> {
    let files = cifar_files(data_dir, ds, split);
    if files.iter().any(|f| !f.is_file()) {
        // Name every file of the dataset that is missing, not only this split's.
        let needed = [Split::Train, Split::Test]
            .map(|s| cifar_files(data_dir, ds, s))
            .concat();
        let missing: Vec<String> = needed
            .iter()
            .filter(|f| !f.is_file())
            .map(|f| f.display().to_string())
            .collect();
        bail!(
            "missing {} data file(s): {}; run `supermask data fetch {} --data {}` on a machine \
             with internet, or {}",
            ds.name(),
            missing.join(", "),
            ds.name(),
            data_dir.display(),
            manual_instructions(data_dir, ds)
        );
    }
    let mut images: Vec<f32> = Vec::new();
    let mut labels: Vec<u8> = Vec::new();
    for f in &files {
        let (pixels, l) = read_cifar_file(f, ds)?;
        let start = images.len();
        images.extend(pixels.iter().map(|&v| f32::from(v)));
        for img in images[start..].chunks_exact_mut(PIXELS) {
            standardize_image(img);
        }
        labels.extend_from_slice(&l);
    }
    let n = labels.len();
    tracing::debug!(
        dataset = ds.name(),
        ?split,
        n,
        "loaded CIFAR split from {}",
        data_dir.join(ds.subdir()).display()
    );
    Ok(Dataset {
        images,
        labels,
        n,
        dim: PIXELS,
        shape: vec![3, 32, 32],
        classes: ds.classes(),
    })
}

/// Official files not present in `data_dir` with their official size.
fn missing_official(data_dir: &Path, ds: CifarDataset) -> Vec<PathBuf> {
    let dir = data_dir.join(ds.subdir());
    ds.official_files()
        .into_iter()
        .map(|(name, size)| (dir.join(name), size))
        .filter(|(p, size)| std::fs::metadata(p).map_or(true, |m| !m.is_file() || m.len() != *size))
        .map(|(p, _)| p)
        .collect()
}
