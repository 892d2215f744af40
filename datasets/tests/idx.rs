//! IDX reading/writing and `load_idx` error handling on small generated files.

use std::path::Path;

use supermask_datasets::{
    dataset_dir, load_idx, read_idx_images, read_idx_labels, write_idx_images, write_idx_labels,
    IdxDataset, Split,
};

fn err_msg<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let msg = format!("{:#}", r.expect_err("expected an error"));
    assert!(!msg.contains('\n'), "error must be one line: {msg}");
    msg
}

fn pixels(n: usize, dim: usize) -> Vec<u8> {
    (0..n * dim).map(|i| (i * 37 % 256) as u8).collect()
}

/// Raw IDX image bytes with an arbitrary header count.
fn raw_images(header_n: u32, rows: u32, cols: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [header_n, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

/// Writes a small split (n images of 3x4, labels i % 10) into `<data>/mnist`.
fn write_split(data: &Path, split: &str, n: usize, gz: bool) {
    let dir = dataset_dir(data, IdxDataset::Mnist);
    let sfx = if gz { ".gz" } else { "" };
    write_idx_images(
        &dir.join(format!("{split}-images-idx3-ubyte{sfx}")),
        &pixels(n, 12),
        n,
        3,
        4,
    )
    .unwrap();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx_labels(
        &dir.join(format!("{split}-labels-idx1-ubyte{sfx}")),
        &labels,
    )
    .unwrap();
}

#[test]
fn raw_images_and_labels_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let (ip, lp) = (
        d.path().join("imgs-idx3-ubyte"),
        d.path().join("lbls-idx1-ubyte"),
    );
    let px = pixels(5, 6);
    write_idx_images(&ip, &px, 5, 2, 3).unwrap();
    write_idx_labels(&lp, &[0, 1, 2, 3, 9]).unwrap();
    assert_eq!(
        std::fs::read(&ip).unwrap().len(),
        16 + 30,
        "raw file is uncompressed"
    );
    assert_eq!(read_idx_images(&ip).unwrap(), (px, 5, 2, 3));
    assert_eq!(read_idx_labels(&lp).unwrap(), vec![0, 1, 2, 3, 9]);
}

#[test]
fn gz_images_and_labels_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let (ip, lp) = (
        d.path().join("imgs-idx3-ubyte.gz"),
        d.path().join("lbls-idx1-ubyte.gz"),
    );
    let px = pixels(7, 4);
    write_idx_images(&ip, &px, 7, 2, 2).unwrap();
    write_idx_labels(&lp, &[5; 7]).unwrap();
    assert_eq!(
        &std::fs::read(&ip).unwrap()[..2],
        &[0x1f, 0x8b],
        "file is gzipped"
    );
    assert_eq!(read_idx_images(&ip).unwrap(), (px, 7, 2, 2));
    assert_eq!(read_idx_labels(&lp).unwrap(), vec![5; 7]);
}

#[test]
fn writer_leaves_no_temp_files_and_rejects_wrong_pixel_count() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sub").join("x-idx3-ubyte");
    write_idx_images(&p, &pixels(2, 4), 2, 2, 2).unwrap();
    let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1, "only the final file remains");
    let msg = err_msg(write_idx_images(&p, &pixels(2, 4), 3, 2, 2));
    assert!(
        msg.contains("x-idx3-ubyte") && msg.contains("need 12 pixels"),
        "{msg}"
    );
}

#[test]
fn truncated_header_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("short-idx3-ubyte");
    std::fs::write(&p, [0, 0, 8, 3, 0, 0]).unwrap();
    let msg = err_msg(read_idx_images(&p));
    assert!(
        msg.contains("short-idx3-ubyte") && msg.contains("truncated header"),
        "{msg}"
    );
    let p2 = d.path().join("tiny-idx1-ubyte");
    std::fs::write(&p2, [0, 0]).unwrap();
    let msg = err_msg(read_idx_labels(&p2));
    assert!(
        msg.contains("tiny-idx1-ubyte") && msg.contains("truncated header"),
        "{msg}"
    );
}

#[test]
fn truncated_data_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cut-idx3-ubyte");
    write_idx_images(&p, &pixels(4, 9), 4, 3, 3).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    let msg = err_msg(read_idx_images(&p));
    assert!(
        msg.contains("cut-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(
        msg.contains("header says 4 images of 3x3 (52 bytes) but the file has 47 bytes"),
        "{msg}"
    );

    let lp = d.path().join("cut-labels.gz");
    write_idx_labels(&lp, &[1, 2, 3]).unwrap();
    let raw = {
        use std::io::Read;
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&lp).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    std::fs::write(d.path().join("cut-labels"), &raw[..raw.len() - 1]).unwrap();
    let msg = err_msg(read_idx_labels(&d.path().join("cut-labels")));
    assert!(
        msg.contains("cut-labels") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn truncated_gzip_stream_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("broken-idx3-ubyte.gz");
    write_idx_images(&p, &pixels(50, 16), 50, 4, 4).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_msg(read_idx_images(&p));
    assert!(
        msg.contains("broken-idx3-ubyte.gz") && msg.contains("gzip"),
        "{msg}"
    );
}

#[test]
fn wrong_magic_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let lp = d.path().join("labels-idx1-ubyte");
    write_idx_labels(&lp, &[1, 2, 3]).unwrap();
    // A label file read as images, and an image file read as labels.
    let msg = err_msg(read_idx_images(&lp));
    assert!(
        msg.contains("labels-idx1-ubyte") && msg.contains("wrong magic"),
        "{msg}"
    );
    assert!(
        msg.contains("0x00000801") && msg.contains("0x00000803"),
        "{msg}"
    );
    let ip = d.path().join("images-idx3-ubyte");
    write_idx_images(&ip, &pixels(1, 4), 1, 2, 2).unwrap();
    let msg = err_msg(read_idx_labels(&ip));
    assert!(
        msg.contains("images-idx3-ubyte") && msg.contains("wrong magic"),
        "{msg}"
    );
}

#[test]
fn header_count_larger_than_data_is_reported_as_truncated() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("count-idx3-ubyte");
    // Header claims 60000 images of 28x28, data holds one image.
    std::fs::write(&p, raw_images(60000, 28, 28, &pixels(1, 784))).unwrap();
    let msg = err_msg(read_idx_images(&p));
    assert!(
        msg.contains("count-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(
        msg.contains("header says 60000 images of 28x28 (47040016 bytes)"),
        "{msg}"
    );
}

#[test]
fn huge_header_dims_do_not_overflow_or_panic() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("huge-idx3-ubyte");
    std::fs::write(&p, raw_images(u32::MAX, u32::MAX, u32::MAX, &[])).unwrap();
    let msg = err_msg(read_idx_images(&p));
    assert!(msg.contains("huge-idx3-ubyte"), "{msg}");
}

#[test]
fn trailing_bytes_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("trail-idx3-ubyte");
    std::fs::write(&p, raw_images(2, 2, 2, &pixels(3, 4))).unwrap();
    let msg = err_msg(read_idx_images(&p));
    assert!(
        msg.contains("trail-idx3-ubyte") && msg.contains("trailing bytes"),
        "{msg}"
    );
    assert!(msg.contains("4 extra"), "{msg}");
    let lp = d.path().join("trail-idx1-ubyte");
    std::fs::write(&lp, [0, 0, 8, 1, 0, 0, 0, 1, 7, 7]).unwrap();
    let msg = err_msg(read_idx_labels(&lp));
    assert!(
        msg.contains("trail-idx1-ubyte") && msg.contains("trailing bytes"),
        "{msg}"
    );
}

#[test]
fn missing_file_read_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let msg = err_msg(read_idx_images(&d.path().join("nope-idx3-ubyte")));
    assert!(
        msg.contains("nope-idx3-ubyte") && msg.contains("cannot read"),
        "{msg}"
    );
}

#[test]
fn load_idx_raw_train_split_is_standardized() {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), "train", 6, false);
    let ds = load_idx(d.path(), IdxDataset::Mnist, Split::Train).unwrap();
    assert_eq!((ds.n, ds.dim, ds.classes), (6, 12, 10));
    assert_eq!(ds.shape, vec![1, 3, 4]);
    assert_eq!(ds.images.len(), 6 * 12);
    assert_eq!(ds.labels, vec![0, 1, 2, 3, 4, 5]);
    for img in ds.images.chunks(12) {
        let mean: f64 = img.iter().map(|&v| f64::from(v)).sum::<f64>() / 12.0;
        assert!(mean.abs() < 1e-5, "mean {mean}");
    }
}

#[test]
fn load_idx_gz_test_split_and_gather() {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), "t10k", 4, true);
    let ds = load_idx(d.path(), IdxDataset::Mnist, Split::Test).unwrap();
    assert_eq!((ds.n, ds.dim), (4, 12));
    let (imgs, labels) = ds.gather(&[3, 1]);
    assert_eq!(labels, vec![3u32, 1]);
    assert_eq!(&imgs[..12], &ds.images[36..48]);
    assert_eq!(&imgs[12..], &ds.images[12..24]);
}

#[test]
fn load_idx_image_label_count_mismatch_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), "train", 5, false);
    let dir = dataset_dir(d.path(), IdxDataset::Mnist);
    write_idx_labels(&dir.join("train-labels-idx1-ubyte"), &[1, 2, 3]).unwrap();
    let msg = err_msg(load_idx(d.path(), IdxDataset::Mnist, Split::Train));
    assert!(
        msg.contains("train-labels-idx1-ubyte") && msg.contains("count mismatch"),
        "{msg}"
    );
    assert!(
        msg.contains("3 labels") && msg.contains("5 images"),
        "{msg}"
    );
}

#[test]
fn load_idx_label_out_of_range_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), "train", 3, false);
    let dir = dataset_dir(d.path(), IdxDataset::Mnist);
    write_idx_labels(&dir.join("train-labels-idx1-ubyte"), &[1, 10, 3]).unwrap();
    let msg = err_msg(load_idx(d.path(), IdxDataset::Mnist, Split::Train));
    assert!(
        msg.contains("train-labels-idx1-ubyte") && msg.contains("out of range"),
        "{msg}"
    );
    assert!(msg.contains("label 10 at index 1"), "{msg}");
}

#[test]
fn load_idx_missing_files_error_names_files_and_fetch_command() {
    let d = tempfile::tempdir().unwrap();
    let msg = err_msg(load_idx(d.path(), IdxDataset::FashionMnist, Split::Test));
    assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("t10k-labels-idx1-ubyte"), "{msg}");
    assert!(msg.contains("fashion-mnist"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    assert!(
        msg.contains("supermask data fetch fashion-mnist --data"),
        "{msg}"
    );

    // Only the labels missing: only they are named.
    write_split(d.path(), "train", 2, false);
    let dir = dataset_dir(d.path(), IdxDataset::Mnist);
    std::fs::remove_file(dir.join("train-labels-idx1-ubyte")).unwrap();
    let msg = err_msg(load_idx(d.path(), IdxDataset::Mnist, Split::Train));
    assert!(msg.contains("train-labels-idx1-ubyte"), "{msg}");
    assert!(!msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("supermask data fetch mnist --data"), "{msg}");
}

#[test]
fn dataset_names_roundtrip_and_unknown_lists_known() {
    for &ds in IdxDataset::all() {
        let found = supermask_datasets::find_dataset(ds.name()).unwrap();
        assert_eq!(found.name(), ds.name());
        assert_eq!(found.sample_shape(), Some(vec![1, 28, 28]));
    }
    assert_eq!(IdxDataset::Mnist.name(), "mnist");
    assert_eq!(IdxDataset::FashionMnist.name(), "fashion-mnist");
    let msg = err_msg(supermask_datasets::find_dataset("cifar").map(|d| d.name()));
    assert!(
        msg.contains("`cifar`") && msg.contains("fashion-mnist, files, mnist"),
        "{msg}"
    );
    assert_eq!(
        dataset_dir(Path::new("d"), IdxDataset::FashionMnist),
        Path::new("d").join("fashion-mnist")
    );
}
