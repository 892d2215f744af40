//! IDX file format (unsigned-byte data only): readers and writers.
//!
//! Layout: big-endian `u32` magic (`0x00000803` for 3-d images, `0x00000801` for 1-d labels),
//! one big-endian `u32` per dimension, then the bytes. Files may be gzipped.

use std::io::{Read, Seek, SeekFrom};
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

/// Opens a file as a byte stream, transparently decompressing it if its name ends in `.gz`
/// or it starts with the gzip magic bytes (an IDX file always starts with two zero bytes).
/// Returns the stream, whether it is gzipped, and the file's size on disk.
fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read>, bool, u64)> {
    let p = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| anyhow!("{p}: cannot read: {e}"))?
        .len();
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
    let gz = is_gz_path(path) || (got == 2 && magic == [0x1f, 0x8b]);
    let reader = std::io::BufReader::new(file);
    Ok(if gz {
        (Box::new(GzDecoder::new(reader)), true, len)
    } else {
        (Box::new(reader), false, len)
    })
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The error of a failed read of `path` (a gzip stream's errors are corrupt data).
fn read_error(path: &Path, gz: bool, e: std::io::Error) -> anyhow::Error {
    let what = if gz {
        "corrupt gzip data"
    } else {
        "cannot read"
    };
    anyhow!("{}: {what}: {e}", path.display())
}

/// Reads a whole file of at most `limit` bytes (after decompression), transparently
/// decompressing it as [`open_maybe_gz`] does. Memory stays bounded by `limit` whatever the
/// file decompresses to: a stream longer than that is an error naming the file.
pub(crate) fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let p = path.display();
    let (reader, gz, len) = open_maybe_gz(path)?;
    if !gz && len > limit {
        bail!("{p}: {len} bytes, more than the {limit} this file can hold");
    }
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| read_error(path, gz, e))?;
    if out.len() as u64 > limit {
        bail!("{p}: decompresses to more than the {limit} bytes this file can hold");
    }
    Ok(out)
}

/// Reads an IDX unsigned-byte file with `magic`, checking its header before reading its data:
/// the data is read only up to the size the header implies (so a gzip stream that
/// decompresses to far more stops there), after checking that size against the memory the
/// machine has ([`supermask_core::limits::check_alloc`]). Returns the dimensions and the data.
fn read_idx(path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let p = path.display();
    let (mut reader, gz, len) = open_maybe_gz(path)?;
    let io_err = |e: std::io::Error| read_error(path, gz, e);
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let mut header = vec![0u8; header_len];
    let got = read_up_to(reader.as_mut(), &mut header).map_err(io_err)?;
    header.truncate(got);
    let (dims, expected) = parse_header(path, &header, magic, what)?;
    let data_len = expected - header_len;
    let source = if gz { "decompressed data" } else { "file" };
    if !gz && len != expected as u64 {
        // The size on disk settles it before anything is read.
        check_length(path, &dims, what, expected, len, source)?;
    }
    supermask_core::limits::check_alloc(
        data_len as u64,
        &format!("{p}: the data of {}", describe(&dims, what)),
    )?;
    let mut data = Vec::with_capacity(data_len);
    reader
        .as_mut()
        .take(data_len as u64)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() < data_len {
        check_length(
            path,
            &dims,
            what,
            expected,
            (header_len + data.len()) as u64,
            source,
        )?;
    }
    // Trailing bytes: count them without holding them (at most 1 GiB more is read).
    let extra = std::io::copy(&mut reader.take(1 << 30), &mut std::io::sink()).map_err(io_err)?;
    if extra > 0 {
        check_length(path, &dims, what, expected, expected as u64 + extra, source)?;
    }
    Ok((dims, data))
}

/// `dims` as the errors name them, e.g. "60000 images of 28x28".
fn describe(dims: &[usize], what: &str) -> String {
    match dims {
        [n, r, c] => format!("{n} {what} of {r}x{c}"),
        [n] => format!("{n} {what}"),
        other => format!("{what} with dims {other:?}"),
    }
}

/// The error for a file of `got` bytes whose header implies `expected` (none when equal).
fn check_length(
    path: &Path,
    dims: &[usize],
    what: &str,
    expected: usize,
    got: u64,
    source: &str,
) -> Result<()> {
    let (p, desc) = (path.display(), describe(dims, what));
    let expected = expected as u64;
    if got < expected {
        bail!("{p}: truncated: header says {desc} ({expected} bytes) but the {source} has {got} bytes");
    }
    if got > expected {
        bail!(
            "{p}: trailing bytes: header says {desc} ({expected} bytes) but the {source} has \
             {got} bytes ({} extra)",
            got - expected
        );
    }
    Ok(())
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses the header of an IDX unsigned-byte file (`bytes` holds at least the header when
/// the file has one) and checks the magic. Returns the dimensions and the total file size
/// they imply.
fn parse_header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<(Vec<usize>, usize)> {
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
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|d| d.checked_add(header_len));
    let Some(expected) = expected else {
        bail!(
            "{p}: bad header: header says {}, which overflows the addressable size",
            describe(&dims, what)
        );
    };
    Ok((dims, expected))
}

/// Reads an IDX unsigned-byte image file (magic `0x00000803`), raw or gzipped.
///
/// Returns `(pixels, n, rows, cols)` with `pixels.len() == n * rows * cols`. Every problem
/// (unreadable, truncated header or data, wrong magic, trailing bytes) is a one-line error
/// naming the file.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let (dims, bytes) = read_idx(path, MAGIC_IMAGES, "images")?;
    Ok((bytes, dims[0], dims[1], dims[2]))
}

/// Reads an IDX unsigned-byte label file (magic `0x00000801`), raw or gzipped.
///
/// Every problem (unreadable, truncated header or data, wrong magic, trailing bytes) is a
/// one-line error naming the file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    Ok(read_idx(path, MAGIC_LABELS, "labels")?.1)
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
