//! IDX file format (unsigned-byte data only): readers and writers.
//!
//! Layout: big-endian `u32` magic (`0x00000803` for 3-d images, `0x00000801` for 1-d labels),
//! one big-endian `u32` per dimension, then the bytes. Files may be gzipped.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::write_atomic;

/// Magic of an IDX file holding unsigned bytes in 3 dimensions (images).
const MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic of an IDX file holding unsigned bytes in 1 dimension (labels).
const MAGIC_LABELS: u32 = 0x0000_0801;

fn is_gz_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Reads a whole file, transparently decompressing it if its name ends in `.gz` or it starts
/// with the gzip magic bytes (an IDX file always starts with two zero bytes).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    if is_gz_path(path) || raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| anyhow!("{}: corrupt gzip data: {e}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses the header of an IDX unsigned-byte file with `ndims` dimensions, checks the magic and
/// that the data length matches the header exactly. Returns the dimensions.
fn parse_header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<Vec<usize>> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let p = path.display();
    if bytes.len() < 4 {
        bail!(
            "{p}: truncated header: an IDX {what} file needs a {header_len}-byte header but the \
             file has {} bytes",
            bytes.len()
        );
    }
    let got = be_u32(bytes, 0);
    if got != magic {
        bail!(
            "{p}: wrong magic number 0x{got:08x} (expected 0x{magic:08x} for IDX unsigned-byte \
             {what}); is this the right file?"
        );
    }
    if bytes.len() < header_len {
        bail!(
            "{p}: truncated header: an IDX {what} file needs a {header_len}-byte header but the \
             file has {} bytes",
            bytes.len()
        );
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| be_u32(bytes, 4 + 4 * i) as usize)
        .collect();
    let desc = match dims.as_slice() {
        [n, r, c] => format!("{n} {what} of {r}x{c}"),
        [n] => format!("{n} {what}"),
        other => format!("{what} with dims {other:?}"),
    };
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|d| d.checked_add(header_len));
    let Some(expected) = expected else {
        bail!("{p}: bad header: header says {desc}, which overflows the addressable size");
    };
    if bytes.len() < expected {
        bail!(
            "{p}: truncated: header says {desc} ({expected} bytes) but the file has {} bytes",
            bytes.len()
        );
    }
    if bytes.len() > expected {
        bail!(
            "{p}: trailing bytes: header says {desc} ({expected} bytes) but the file has {} bytes \
             ({} extra)",
            bytes.len(),
            bytes.len() - expected
        );
    }
    Ok(dims)
}

/// Reads an IDX unsigned-byte image file (magic `0x00000803`), raw or gzipped.
///
/// Returns `(pixels, n, rows, cols)` with `pixels.len() == n * rows * cols`. Every problem
/// (unreadable, truncated header or data, wrong magic, trailing bytes) is a one-line error
/// naming the file.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let mut bytes = read_maybe_gz(path)?;
    let dims = parse_header(path, &bytes, MAGIC_IMAGES, "images")?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    bytes.drain(..16);
    Ok((bytes, n, rows, cols))
}

/// Reads an IDX unsigned-byte label file (magic `0x00000801`), raw or gzipped.
///
/// Every problem (unreadable, truncated header or data, wrong magic, trailing bytes) is a
/// one-line error naming the file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = read_maybe_gz(path)?;
    parse_header(path, &bytes, MAGIC_LABELS, "labels")?;
    bytes.drain(..8);
    Ok(bytes)
}

fn dim_u32(path: &Path, what: &str, v: usize) -> Result<[u8; 4]> {
    u32::try_from(v).map(u32::to_be_bytes).map_err(|_| {
        anyhow!(
            "{}: {what} = {v} does not fit an IDX u32 dimension",
            path.display()
        )
    })
}

/// Encodes `header ++ data` and writes it atomically, gzipped if `path` ends in `.gz`.
fn write_idx(path: &Path, header: &[u8], data: &[u8]) -> Result<()> {
    if is_gz_path(path) {
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(header)
            .and_then(|_| enc.write_all(data))
            .map_err(|e| anyhow!("{}: gzip encoding failed: {e}", path.display()))?;
        let buf = enc
            .finish()
            .map_err(|e| anyhow!("{}: gzip encoding failed: {e}", path.display()))?;
        write_atomic(path, &buf)
    } else {
        let mut buf = Vec::with_capacity(header.len() + data.len());
        buf.extend_from_slice(header);
        buf.extend_from_slice(data);
        write_atomic(path, &buf)
    }
}

/// Writes an IDX unsigned-byte image file (raw, or gzipped if `path` ends in `.gz`) atomically
/// (temp file in the same directory, then rename). `pixels.len()` must be `n * rows * cols`.
pub fn write_idx_images(
    path: &Path,
    pixels: &[u8],
    n: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let expected = n.checked_mul(rows).and_then(|x| x.checked_mul(cols));
    if expected != Some(pixels.len()) {
        bail!(
            "{}: cannot write: {n} images of {rows}x{cols} need {} pixels but {} were given",
            path.display(),
            expected.map_or_else(|| "too many".to_string(), |e| e.to_string()),
            pixels.len()
        );
    }
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&MAGIC_IMAGES.to_be_bytes());
    header.extend_from_slice(&dim_u32(path, "n", n)?);
    header.extend_from_slice(&dim_u32(path, "rows", rows)?);
    header.extend_from_slice(&dim_u32(path, "cols", cols)?);
    write_idx(path, &header, pixels)
}

/// Writes an IDX unsigned-byte label file (raw, or gzipped if `path` ends in `.gz`) atomically
/// (temp file in the same directory, then rename).
pub fn write_idx_labels(path: &Path, labels: &[u8]) -> Result<()> {
    let mut header = Vec::with_capacity(8);
    header.extend_from_slice(&MAGIC_LABELS.to_be_bytes());
    header.extend_from_slice(&dim_u32(path, "n", labels.len())?);
    write_idx(path, &header, labels)
}
