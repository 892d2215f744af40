//! CIFAR-10 / CIFAR-100 in the official binary formats: reader, writer, loader and fetcher.
//!
//! Layout after extracting the official archives into the data dir:
//!
//! * CIFAR-10: `<data_dir>/cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin`;
//!   each record is 1 label byte followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
//!   each 32x32 row-major), 10000 records per file.
//! * CIFAR-100: `<data_dir>/cifar-100-binary/{train,test}.bin`; each record is 1 coarse label
//!   byte, 1 fine label byte and 3072 pixel bytes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use md5::{Digest, Md5};

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
    fn sample_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }
    fn classes(&self) -> usize {
        CifarDataset::classes(self)
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

/// Lower-case hex md5 of a file, streamed.
fn md5_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Last non-empty line of a command's stderr (progress meters use `\r`).
fn last_stderr_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .split(['\n', '\r'])
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no stderr output)")
        .to_string()
}

/// Runs a command; any failure (cannot start, non-zero exit) is a short one-line description.
fn run_quiet(cmd: &mut Command) -> std::result::Result<(), String> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    tracing::info!(
        "running `{prog} {}`",
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{prog}: not installed")),
        Err(e) => Err(format!("{prog}: cannot run: {e}")),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{prog}: {} ({})",
            out.status,
            last_stderr_line(&out.stderr)
        )),
    }
}

/// A download program and its arguments before the output file: the command is
/// `name ARGS.. FILE URL`.
type Downloader<'a> = (&'a str, &'a [&'a str]);

/// `curl -fL --retry 2 -o FILE URL`, then `wget -O FILE URL`.
const DOWNLOADERS: &[Downloader<'static>] =
    &[("curl", &["-fL", "--retry", "2", "-o"]), ("wget", &["-O"])];

/// Downloads `url` to `file` with the first downloader that succeeds; if none does, one error
/// saying the machine cannot reach the URL and how to provide the data by hand.
fn download(
    ds: CifarDataset,
    data_dir: &Path,
    file: &Path,
    downloaders: &[Downloader<'_>],
) -> Result<()> {
    let url = ds.url();
    let mut failures = Vec::new();
    for &(prog, args) in downloaders {
        let mut cmd = Command::new(prog);
        cmd.args(args).arg(file).arg(url);
        match run_quiet(&mut cmd) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!("download attempt failed: {e}");
                failures.push(e);
            }
        }
    }
    let expected: Vec<String> = all_files(data_dir, ds)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    bail!(
        "cannot download {} data: this machine cannot reach {url} ({}); to provide the data by \
         hand, on a machine with internet {}, then copy the extracted files here; expected \
         files: {}",
        ds.name(),
        failures.join("; "),
        manual_instructions(data_dir, ds),
        expected.join(", ")
    )
}

/// Download the official archive, verify its md5, extract it with `tar xzf` into `data_dir`;
/// skipped if every official file is already present with its official size. Returns the
/// paths of all files (train files first, then test), as [`cifar_files`] names them.
///
/// Downloads with `curl -fL --retry 2 -o FILE URL`, falling back to `wget -O FILE URL`. If
/// neither works, one error says the machine cannot reach the URL and how to provide the data
/// by hand (download URL, extract command and the expected files).
pub fn fetch_cifar(ds: CifarDataset, data_dir: &Path) -> Result<Vec<PathBuf>> {
    fetch_cifar_with(ds, data_dir, DOWNLOADERS, ds.archive_md5())
}

/// [`fetch_cifar`] with the download programs and the expected archive md5 as parameters.
fn fetch_cifar_with(
    ds: CifarDataset,
    data_dir: &Path,
    downloaders: &[Downloader<'_>],
    md5: &str,
) -> Result<Vec<PathBuf>> {
    if missing_official(data_dir, ds).is_empty() {
        tracing::info!(
            "{}: all {} files present, skipping download",
            data_dir.join(ds.subdir()).display(),
            ds.name()
        );
        return Ok(all_files(data_dir, ds));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow!("{}: cannot create directory: {e}", data_dir.display()))?;
    // Scratch space inside data_dir so the final moves are renames on one filesystem.
    let tmp = tempfile::Builder::new()
        .prefix(".supermask-fetch-")
        .tempdir_in(data_dir)
        .map_err(|e| {
            anyhow!(
                "{}: cannot create a temporary directory: {e}",
                data_dir.display()
            )
        })?;
    let archive = tmp.path().join(ds.archive_name());
    tracing::info!("downloading {} to {}", ds.url(), archive.display());
    download(ds, data_dir, &archive, downloaders)?;
    let got = md5_file(&archive)?;
    if got != md5 {
        bail!(
            "{}: checksum mismatch: expected md5 {md5} but got {got} (downloaded from {}); \
             nothing extracted",
            archive.display(),
            ds.url()
        );
    }
    let extracted = tmp.path().join("extracted");
    std::fs::create_dir_all(&extracted)
        .map_err(|e| anyhow!("{}: cannot create directory: {e}", extracted.display()))?;
    run_quiet(
        Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&extracted),
    )
    .map_err(|e| anyhow!("{}: extraction failed: {e}", archive.display()))?;
    install_extracted(&extracted.join(ds.subdir()), &data_dir.join(ds.subdir()))?;
    let still = missing_official(data_dir, ds);
    if !still.is_empty() {
        let names: Vec<String> = still.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "{}: archive extracted but these files are missing or have the wrong size: {}",
            archive.display(),
            names.join(", ")
        );
    }
    tracing::info!(
        "{}: {} installed (md5 ok)",
        data_dir.join(ds.subdir()).display(),
        ds.name()
    );
    Ok(all_files(data_dir, ds))
}

/// Moves every regular file of `src` into `dst` (renames, so each final file appears whole).
fn install_extracted(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)
        .map_err(|e| anyhow!("{}: cannot create directory: {e}", dst.display()))?;
    let entries =
        std::fs::read_dir(src).map_err(|e| anyhow!("{}: cannot list: {e}", src.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow!("{}: cannot list: {e}", src.display()))?;
        let from = entry.path();
        if !from.is_file() {
            continue;
        }
        let to = dst.join(entry.file_name());
        std::fs::rename(&from, &to)
            .map_err(|e| anyhow!("{}: cannot move to {}: {e}", from.display(), to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("abc");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(md5_file(&f).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn fetch_skips_download_when_all_official_files_are_present() {
        let dir = tempfile::tempdir().unwrap();
        for &ds in CifarDataset::all() {
            for (name, size) in ds.official_files() {
                let p = dir.path().join(ds.subdir()).join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                // Sparse files of the official size: no disk space, no download.
                std::fs::File::create(&p).unwrap().set_len(size).unwrap();
            }
            // No downloader at all: any download attempt would fail.
            let files = fetch_cifar_with(ds, dir.path(), &[], ds.archive_md5()).unwrap();
            assert_eq!(files, all_files(dir.path(), ds));
            assert!(files.iter().all(|f| f.is_file()));
        }
    }

    #[test]
    fn fetch_with_wrong_size_file_is_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ds = CifarDataset::Cifar100;
        for (name, size) in ds.official_files() {
            let p = dir.path().join(ds.subdir()).join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::File::create(&p)
                .unwrap()
                .set_len(size - 1)
                .unwrap();
        }
        assert_eq!(missing_official(dir.path(), ds).len(), 2);
        assert!(fetch_cifar_with(ds, dir.path(), &[], ds.archive_md5()).is_err());
    }

    #[test]
    fn failed_download_is_one_error_with_url_extract_command_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let none: &[Downloader<'_>] = &[
            ("definitely-not-curl-xyz", &["-o"]),
            ("sh", &["-c", "echo 'cannot resolve host' >&2; exit 6"]),
        ];
        for &ds in CifarDataset::all() {
            let err = fetch_cifar_with(ds, dir.path(), none, ds.archive_md5()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            assert!(msg.contains("cannot reach"), "{msg}");
            assert!(msg.contains(ds.url()), "{msg}");
            assert!(
                msg.contains("definitely-not-curl-xyz: not installed"),
                "{msg}"
            );
            assert!(msg.contains("cannot resolve host"), "{msg}");
            let tar = format!("tar xzf {} -C {}", ds.archive_name(), dir.path().display());
            assert!(msg.contains(&tar), "{msg}");
            for f in all_files(dir.path(), ds) {
                assert!(msg.contains(&f.display().to_string()), "{msg}");
            }
            // The scratch directory is cleaned up.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn bad_md5_download_is_rejected_and_nothing_is_extracted() {
        let dir = tempfile::tempdir().unwrap();
        // A "downloader" that writes garbage to the file: `sh -c 'echo x > "$0"' FILE URL`.
        let fake: &[Downloader<'_>] = &[("sh", &["-c", "echo garbage > \"$0\""])];
        let ds = CifarDataset::Cifar10;
        let err = fetch_cifar_with(ds, dir.path(), fake, ds.archive_md5()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(msg.contains(CifarDataset::Cifar10.archive_md5()), "{msg}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn verified_archive_is_extracted_and_moved_into_place() {
        // A small archive in the official layout, "downloaded" by copying it with `cp`.
        let src = tempfile::tempdir().unwrap();
        let ds = CifarDataset::Cifar100;
        let inner = src.path().join(ds.subdir());
        write_cifar_file(&inner.join("train.bin"), ds, &[7; 2 * PIXELS], &[3, 99]).unwrap();
        write_cifar_file(&inner.join("test.bin"), ds, &[9; PIXELS], &[42]).unwrap();
        std::fs::write(inner.join("fine_label_names.txt"), "apple\n").unwrap();
        let tgz = src.path().join(ds.archive_name());
        run_quiet(
            Command::new("tar")
                .arg("czf")
                .arg(&tgz)
                .arg("-C")
                .arg(src.path())
                .arg(ds.subdir()),
        )
        .unwrap();
        let md5 = md5_file(&tgz).unwrap();
        // `sh -c 'cp SRC "$0"' FILE URL` copies the archive to FILE.
        let script = format!("cp '{}' \"$0\"", tgz.display());
        let args = ["-c", script.as_str()];
        let fake: &[Downloader<'_>] = &[("sh", &args)];
        let dst = tempfile::tempdir().unwrap();
        // The small files do not have the official sizes, so the final check complains, but
        // only after extracting and moving everything into place.
        let err = fetch_cifar_with(ds, dst.path(), fake, &md5).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("missing or have the wrong size"), "{msg}");
        let out = dst.path().join(ds.subdir());
        let (px, l) = read_cifar_file(&out.join("train.bin"), ds).unwrap();
        assert_eq!((px, l), (vec![7; 2 * PIXELS], vec![3, 99]));
        assert_eq!(read_cifar_file(&out.join("test.bin"), ds).unwrap().1, [42]);
        assert!(out.join("fine_label_names.txt").is_file());
        // Only the dataset directory remains: the scratch directory is gone.
        assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 1);
    }
}
