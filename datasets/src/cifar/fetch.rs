//! Fetching the official archives: download (curl, then wget), md5 check, extraction.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use md5::{Digest, Md5};

use super::{all_files, manual_instructions, missing_official, CifarDataset};
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
    use crate::cifar::{read_cifar_file, write_cifar_file, PIXELS};

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
