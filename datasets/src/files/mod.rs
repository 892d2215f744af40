//! The `files` dataset: the user's own images, given as NumPy arrays or as PNG folders under the
//! data root (`--data DIR`). Each split is found in exactly one of these layouts:
//!
//! | layout | train split | test split |
//! |---|---|---|
//! | one archive per split | `train.npz` with `images` and `labels` (or `x` and `y`) | `test.npz` |
//! | one archive, Keras style | `data.npz` with `x_train` and `y_train` | `x_test`, `y_test` |
//! | arrays | `train_images.npy`, `train_labels.npy` | `test_images.npy`, `test_labels.npy` |
//! | PNG folders (`ImageFolder`) | `train/CLASS/*.png` | `test/CLASS/*.png` |
//!
//! Images are uint8, any integer type, float32 or float64 arrays of shape `[n, h, w]` (one
//! channel), `[n, h, w, c]` (channels last, NumPy's and Keras' order) or `[n, c, h, w]` (when
//! the second dimension is 1 or 3 and the last is not: PyTorch's order); labels are integer
//! class indices of shape `[n]` or `[n, 1]`, below 256. PNG classes are the folder names in
//! byte order. Every image is standardized per image as the built-in datasets are; the sample
//! shape is the config's `data.shape`, checked against the files when they are loaded.

mod npy;
mod png;

pub use npy::npy_bytes;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Result};

use crate::{standardize_image, Dataset, DatasetSource, Split};

/// The `files` dataset (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct FilesDataset;

crate::register_dataset!(FilesDataset);

impl DatasetSource for FilesDataset {
    fn name(&self) -> &'static str {
        "files"
    }
    fn description(&self) -> &'static str {
        "your own data under --data: train.npz/test.npz, data.npz (x_train, y_train, ...), \
         {train,test}_{images,labels}.npy or train/ and test/ PNG folders per class; \
         shape from data.shape"
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }
    fn classes(&self) -> Option<usize> {
        None
    }
    fn load(&self, data_dir: &Path, split: Split) -> Result<Dataset> {
        load_files(data_dir, split)
    }
    fn fetch(&self, _data_dir: &Path) -> Result<Vec<PathBuf>> {
        bail!("the files dataset is your own data under --data; there is nothing to fetch")
    }
}

/// A split as read, before standardization: shape channels first, values channels first,
/// labels and the number of classes.
pub(crate) struct Loaded {
    shape: Vec<usize>,
    images: Vec<f32>,
    labels: Vec<u8>,
    classes: usize,
}

/// Where one split of a `files` dataset is.
enum Layout {
    SplitNpz(PathBuf),
    KerasNpz(PathBuf),
    Npy(PathBuf, PathBuf),
    Folders(PathBuf),
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// The one layout `dir` holds for `split`, or an error listing what was looked for.
fn find_layout(dir: &Path, split: Split) -> Result<Layout> {
    let s = split_name(split);
    let mut found = Vec::new();
    let npz = dir.join(format!("{s}.npz"));
    if npz.is_file() {
        found.push(Layout::SplitNpz(npz));
    }
    let keras = dir.join("data.npz");
    if keras.is_file() {
        found.push(Layout::KerasNpz(keras));
    }
    let (images, labels) = (
        dir.join(format!("{s}_images.npy")),
        dir.join(format!("{s}_labels.npy")),
    );
    match (images.is_file(), labels.is_file()) {
        (true, true) => found.push(Layout::Npy(images, labels)),
        (false, false) => {}
        (true, false) => bail!(
            "{} exists but {} does not",
            images.display(),
            labels.display()
        ),
        (false, true) => bail!(
            "{} exists but {} does not",
            labels.display(),
            images.display()
        ),
    }
    let folder = dir.join(s);
    if folder.is_dir() {
        found.push(Layout::Folders(folder));
    }
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        0 => bail!(
            "{}: no {s} split of the files dataset: expected {s}.npz, data.npz, \
             {s}_images.npy with {s}_labels.npy, or a {s}/ folder of class folders of PNGs",
            dir.display()
        ),
        _ => bail!(
            "{}: the {s} split is given in {} layouts at once ({s}.npz, data.npz, {s}_*.npy, \
             {s}/); keep one",
            dir.display(),
            found.len()
        ),
    }
}

/// Loads one split of the `files` dataset under `dir`.
pub fn load_files(dir: &Path, split: Split) -> Result<Dataset> {
    let s = split_name(split);
    let Loaded {
        shape,
        mut images,
        labels,
        classes,
    } = match find_layout(dir, split)? {
        Layout::SplitNpz(p) => from_arrays(
            npy::read_npz_entry(&p, &["images", "x"])?,
            npy::read_npz_entry(&p, &["labels", "y"])?,
        )?,
        Layout::KerasNpz(p) => from_arrays(
            npy::read_npz_entry(&p, &[&format!("x_{s}")])?,
            npy::read_npz_entry(&p, &[&format!("y_{s}")])?,
        )?,
        Layout::Npy(i, l) => from_arrays(npy::read_npy_file(&i)?, npy::read_npy_file(&l)?)?,
        Layout::Folders(folder) => {
            // Labels follow the training split's class folders, so both splits agree.
            let classes: Vec<String> = png::class_folders(&dir.join("train"))?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            ensure!(
                classes.len() <= 256,
                "{}: {} class folders; at most 256 classes",
                dir.join("train").display(),
                classes.len()
            );
            let (shape, images, labels) = png::read_folder(&folder, &classes)?;
            Loaded {
                shape,
                images,
                labels,
                classes: classes.len(),
            }
        }
    };
    let (n, dim) = (labels.len(), shape.iter().product::<usize>());
    for img in images.chunks_exact_mut(dim.max(1)) {
        standardize_image(img);
    }
    Ok(Dataset {
        images,
        labels,
        n,
        dim,
        shape,
        classes,
    })
}

/// The split an images and a labels array hold; the classes are the largest label plus one.
fn from_arrays(images: npy::Array, labels: npy::Array) -> Result<Loaded> {
    let (is, ls) = (&images.source, &labels.source);
    let (n, c, h, w, channels_last) = match images.shape[..] {
        [n, h, w] => (n, 1, h, w, false),
        [n, a, b, d] if matches!(a, 1 | 3) && !matches!(d, 1 | 3) => (n, a, b, d, false),
        [n, h, w, c] => (n, c, h, w, true),
        _ => bail!(
            "{is}: images of shape {:?}; expected [n, height, width], [n, height, width, \
             channels] or [n, channels, height, width]",
            images.shape
        ),
    };
    ensure!(
        matches!(labels.shape[..], [m] | [m, 1] if m == n),
        "{ls}: labels of shape {:?} for {n} images in {is}; expected [{n}] or [{n}, 1]",
        labels.shape
    );
    ensure!(
        labels.kind.is_integer(),
        "{ls}: labels must be integer class indices, not floating point"
    );
    let mut lab = Vec::with_capacity(n);
    for i in 0..n {
        let v = labels.get(i);
        ensure!(
            (0.0..=255.0).contains(&v),
            "{ls}: label {v} at index {i}; labels are class indices 0..=255"
        );
        lab.push(v as u8);
    }
    let dim = c * h * w;
    supermask_core::limits::check_alloc(
        (n as u64).saturating_mul(dim as u64).saturating_mul(4),
        &format!("{is}: {n} images as float32"),
    )?;
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                let at = if channels_last {
                    (i * h * w + p) * c + ch
                } else {
                    (i * c + ch) * h * w + p
                };
                out.push(images.get(at) as f32);
            }
        }
    }
    if let Some(at) = out.iter().position(|v| !v.is_finite()) {
        return Err(anyhow!(
            "{is}: image {} holds a NaN or infinite value",
            at / dim.max(1)
        ));
    }
    let classes = lab.iter().map(|&l| usize::from(l) + 1).max().unwrap_or(0);
    Ok(Loaded {
        shape: vec![c, h, w],
        images: out,
        labels: lab,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn u8s(descr_shape: &[usize], data: &[u8]) -> Vec<u8> {
        npy_bytes("|u1", descr_shape, data)
    }

    fn i64s(v: &[i64]) -> Vec<u8> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        npy_bytes("<i8", &[v.len()], &bytes)
    }

    /// Two 2x2 grayscale images (values 0..8) with labels 1 and 0, standardized by hand.
    fn expected() -> Dataset {
        let mut images: Vec<f32> = (0..8).map(|v| v as f32).collect();
        images.chunks_exact_mut(4).for_each(standardize_image);
        Dataset {
            images,
            labels: vec![1, 0],
            n: 2,
            dim: 4,
            shape: vec![1, 2, 2],
            classes: 2,
        }
    }

    fn same(a: &Dataset, b: &Dataset) {
        assert_eq!(
            (&a.images, &a.labels, a.n, a.dim, &a.shape, a.classes),
            (&b.images, &b.labels, b.n, b.dim, &b.shape, b.classes)
        );
    }

    fn npz(path: &Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in entries {
            z.start_file(format!("{name}.npy"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    fn png_file(path: &Path, w: u32, h: u32, color: ::png::ColorType, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut e = ::png::Encoder::new(f, w, h);
        e.set_color(color);
        e.set_depth(::png::BitDepth::Eight);
        e.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn npy_npz_and_keras_layouts_load_the_same_standardized_images() {
        let img = u8s(&[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]);
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("train_images.npy"), &img).unwrap();
        std::fs::write(d.join("train_labels.npy"), i64s(&[1, 0])).unwrap();
        same(&load_files(d, Split::Train).unwrap(), &expected());

        let t = tempfile::tempdir().unwrap();
        npz(
            &t.path().join("train.npz"),
            &[("x", img.clone()), ("y", i64s(&[1, 0]))],
            true,
        );
        same(&load_files(t.path(), Split::Train).unwrap(), &expected());

        let t = tempfile::tempdir().unwrap();
        let labels = npy_bytes("|u1", &[2, 1], &[1, 0]);
        npz(
            &t.path().join("data.npz"),
            &[("x_test", img), ("y_test", labels)],
            false,
        );
        same(&load_files(t.path(), Split::Test).unwrap(), &expected());
    }

    #[test]
    fn channels_last_and_channels_first_arrays_give_the_same_samples() {
        // One 2x4 RGB image whose value is 10 * channel + pixel.
        let first: Vec<u8> = (0..3)
            .flat_map(|c| (0..8).map(move |p| 10 * c + p))
            .collect();
        let last: Vec<u8> = (0..8)
            .flat_map(|p| (0..3).map(move |c| 10 * c + p))
            .collect();
        let load = |shape: &[usize], data: &[u8]| {
            let t = tempfile::tempdir().unwrap();
            std::fs::write(t.path().join("test_images.npy"), u8s(shape, data)).unwrap();
            std::fs::write(t.path().join("test_labels.npy"), i64s(&[0])).unwrap();
            load_files(t.path(), Split::Test).unwrap()
        };
        let a = load(&[1, 3, 2, 4], &first);
        let b = load(&[1, 2, 4, 3], &last);
        assert_eq!(a.shape, [3, 2, 4]);
        same(&a, &b);
    }

    #[test]
    fn png_folders_load_classes_in_name_order_with_the_training_labels() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        png_file(
            &d.join("train/b/1.png"),
            2,
            2,
            ::png::ColorType::Grayscale,
            &[0, 1, 2, 3],
        );
        png_file(
            &d.join("train/a/1.png"),
            2,
            2,
            ::png::ColorType::Grayscale,
            &[4, 5, 6, 7],
        );
        std::fs::write(d.join("train/a/notes.txt"), "ignored").unwrap();
        same(&load_files(d, Split::Train).unwrap(), &{
            let mut e = expected();
            e.images.rotate_left(4);
            e.labels = vec![0, 1];
            e
        });
        // The test split has only class b: its label is still the training split's (1).
        let rgba: Vec<u8> = (0..4).flat_map(|p| [p, p, p, 255]).collect();
        png_file(&d.join("test/b/x.png"), 2, 2, ::png::ColorType::Rgba, &rgba);
        let test = load_files(d, Split::Test).unwrap();
        assert_eq!(
            (test.labels.clone(), test.shape.clone(), test.classes),
            (vec![1], vec![3, 2, 2], 2)
        );
        png_file(
            &d.join("test/c/x.png"),
            2,
            2,
            ::png::ColorType::Grayscale,
            &[0; 4],
        );
        let err = format!("{:#}", load_files(d, Split::Test).unwrap_err());
        assert!(err.contains("`c`") && err.contains("a, b"), "{err}");
        png_file(
            &d.join("train/b/2.png"),
            3,
            1,
            ::png::ColorType::Grayscale,
            &[0; 3],
        );
        let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
        assert!(err.contains("2.png") && err.contains("[1, 1, 3]"), "{err}");
    }

    #[test]
    fn bad_or_missing_files_get_one_error_naming_them() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
        assert!(err.contains("train.npz") && err.contains("train/"), "{err}");
        let img = u8s(&[2, 2, 2], &[0; 8]);
        std::fs::write(d.join("train_images.npy"), &img).unwrap();
        let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
        assert!(err.contains("train_labels.npy"), "{err}");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (i64s(&[0, 1, 2]), "labels of shape [3]"),
            (i64s(&[0, 300]), "label 300 at index 1"),
            (i64s(&[0, -1]), "label -1 at index 1"),
            (npy_bytes("<f4", &[2], &[0; 8]), "not floating point"),
        ];
        for (labels, want) in cases {
            std::fs::write(d.join("train_labels.npy"), labels).unwrap();
            let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
            assert!(
                err.contains("train_labels.npy") && err.contains(want),
                "{want}: {err}"
            );
        }
        let nan: Vec<u8> = [0.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(
            d.join("train_images.npy"),
            npy_bytes("<f4", &[2, 1, 1], &nan),
        )
        .unwrap();
        std::fs::write(d.join("train_labels.npy"), i64s(&[0, 1])).unwrap();
        let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
        assert!(err.contains("image 1 holds a NaN"), "{err}");
        npz(&d.join("train.npz"), &[("images", img)], false);
        let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
        assert!(err.contains("2 layouts"), "{err}");
        std::fs::remove_file(d.join("train_images.npy")).unwrap();
        std::fs::remove_file(d.join("train_labels.npy")).unwrap();
        let err = format!("{:#}", load_files(d, Split::Train).unwrap_err());
        assert!(
            err.contains("train.npz") && err.contains("labels or y") && err.contains("images"),
            "{err}"
        );
    }
}
