//! `load_by_name`, `fetch_by_name` and `dataset_names` (generated files only, no network).

use std::path::Path;

use supermask_datasets::{
    cifar_files, dataset_dir, dataset_names, fetch_by_name, load_by_name, write_cifar_file,
    write_idx_images, write_idx_labels, CifarDataset, IdxDataset, Split,
};

fn write_idx_split(data: &Path, ds: IdxDataset, prefix: &str, labels: &[u8]) {
    let dir = dataset_dir(data, ds);
    let px: Vec<u8> = (0..labels.len() * 28 * 28)
        .map(|i| (i % 251) as u8)
        .collect();
    write_idx_images(
        &dir.join(format!("{prefix}-images-idx3-ubyte")),
        &px,
        labels.len(),
        28,
        28,
    )
    .unwrap();
    write_idx_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// The built-in dataset plugins, sorted: the four standard sets and `files` (your own images
/// or arrays).
#[test]
fn dataset_names_lists_the_built_in_datasets_sorted() {
    assert_eq!(
        dataset_names(),
        ["cifar10", "cifar100", "fashion-mnist", "files", "mnist"]
    );
}

#[test]
fn load_by_name_dispatches_to_idx_and_cifar_loaders() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_idx_split(data, IdxDataset::Mnist, "t10k", &[1, 2, 3]);
    write_idx_split(data, IdxDataset::FashionMnist, "train", &[9, 8]);
    for (k, f) in cifar_files(data, CifarDataset::Cifar10, Split::Train)
        .iter()
        .enumerate()
    {
        write_cifar_file(f, CifarDataset::Cifar10, &vec![k as u8; 3072], &[k as u8]).unwrap();
    }
    let c100 = &cifar_files(data, CifarDataset::Cifar100, Split::Test)[0];
    write_cifar_file(c100, CifarDataset::Cifar100, &vec![5; 2 * 3072], &[77, 3]).unwrap();

    let m = load_by_name(data, "mnist", Split::Test).unwrap();
    assert_eq!(
        (m.n, m.dim, m.classes, &m.shape[..]),
        (3, 784, 10, &[1, 28, 28][..])
    );
    assert_eq!(m.labels, [1, 2, 3]);
    let f = load_by_name(data, "fashion-mnist", Split::Train).unwrap();
    assert_eq!((f.n, f.labels.as_slice()), (2, &[9, 8][..]));
    let c = load_by_name(data, "cifar10", Split::Train).unwrap();
    assert_eq!(
        (c.n, c.dim, c.classes, &c.shape[..]),
        (5, 3072, 10, &[3, 32, 32][..])
    );
    assert_eq!(c.labels, [0, 1, 2, 3, 4]);
    let c = load_by_name(data, "cifar100", Split::Test).unwrap();
    assert_eq!(
        (c.n, c.classes, c.labels.as_slice()),
        (2, 100, &[77, 3][..])
    );
    // Names are case-insensitive and accept the hyphenated spelling.
    assert_eq!(load_by_name(data, "CIFAR-100", Split::Test).unwrap().n, 2);
}

#[test]
fn load_by_name_unknown_name_error_lists_known_names() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_by_name(dir.path(), "imagenet", Split::Train).unwrap_err();
    let m = format!("{err:#}");
    assert!(m.contains("unknown dataset `imagenet`"), "{m}");
    for name in dataset_names() {
        assert!(m.contains(name), "{m}");
    }
}

#[test]
fn fetch_by_name_unknown_name_error_lists_known_names() {
    let dir = tempfile::tempdir().unwrap();
    let err = fetch_by_name("svhn", dir.path()).unwrap_err();
    let m = format!("{err:#}");
    assert!(m.contains("unknown dataset `svhn`"), "{m}");
    for name in dataset_names() {
        assert!(m.contains(name), "{m}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing fetched"
    );
}

#[test]
fn load_by_name_missing_cifar_error_names_files_fetch_command_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let err = load_by_name(dir.path(), "cifar10", Split::Test).unwrap_err();
    let m = format!("{err:#}");
    assert!(!m.contains('\n'), "{m}");
    let f = &cifar_files(dir.path(), CifarDataset::Cifar10, Split::Test)[0];
    assert!(m.contains(&f.display().to_string()), "{m}");
    assert!(
        m.contains(&format!("supermask data fetch cifar10 --data {d}")),
        "{m}"
    );
    assert!(
        m.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
        "{m}"
    );
}
