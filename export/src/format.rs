//! The binary `.ssm` encoding; see `docs/format.md` for the byte-level specification.
//!
//! A file is a 16-byte header (magic, version, total length), a body (the architecture as
//! JSON, the masked layers, the non-masked tensors) and a SHA-256 checksum of everything
//! before it. Each masked layer's weights are stored in the smaller of two encodings: a
//! ternary pattern either 2-bit packed ([`Encoding::Packed2Bit`]) or as delta-coded kept
//! indices plus sign bits ([`Encoding::SparseTernary`]); real-valued weights either dense
//! ([`Encoding::DenseValues`]) or as delta-coded kept indices plus their values
//! ([`Encoding::SparseValues`]).
//!
//! [`decode`] accepts any byte string: it never panics, and every allocation it makes is
//! bounded by what the input can hold (see [`DECODE_BUDGET_FACTOR`]).

use std::fmt;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::model::{LayerWeights, SsmLayer, SsmModel};

/// The first four bytes of every `.ssm` file.
pub const MAGIC: [u8; 4] = *b"SSMK";

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Bytes of the fixed header: magic (4), version (`u32`), total file length (`u64`).
pub const HEADER_LEN: usize = 16;

/// Bytes of the trailing SHA-256 checksum.
pub const CHECKSUM_LEN: usize = 32;

/// Most dimensions a layer or tensor shape may have.
pub const MAX_NDIM: usize = 8;

/// Most entries (product of the shape) a layer or tensor may have: `2^31`.
pub const MAX_NUMEL: u64 = 1 << 31;

/// Decoder budget, factor: after each masked layer, the decoded weight bytes of all masked
/// layers so far (1 byte per entry of a ternary layer, 4 per entry of a real-valued layer)
/// must not exceed `DECODE_BUDGET_FACTOR * end + DECODE_BUDGET_SLACK`, where `end` is the
/// file offset just past that layer's payload. The encoder falls back to the dense encoding
/// of a layer whenever its sparse encoding would break this rule.
pub const DECODE_BUDGET_FACTOR: u64 = 256;

/// Decoder budget, constant slack; see [`DECODE_BUDGET_FACTOR`].
pub const DECODE_BUDGET_SLACK: u64 = 65536;

/// Fixed bytes of a file with an empty JSON header, no layers and no tensors: header, JSON
/// length, layer count, tensor count, checksum.
const MIN_FILE_LEN: usize = HEADER_LEN + 4 + 4 + 4 + CHECKSUM_LEN;

/// How a masked layer's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Ternary pattern, 2 bits per entry, 4 entries per byte (tag 0).
    Packed2Bit,
    /// Ternary pattern as kept count, delta-coded kept indices and sign bits (tag 1).
    SparseTernary,
    /// Real values as kept count, delta-coded kept indices and the kept `f32` values (tag 2).
    SparseValues,
    /// Real values, every entry as an `f32` (tag 3).
    DenseValues,
}

impl Encoding {
    /// The tag byte that names this encoding in a file.
    pub fn tag(self) -> u8 {
        match self {
            Encoding::Packed2Bit => 0,
            Encoding::SparseTernary => 1,
            Encoding::SparseValues => 2,
            Encoding::DenseValues => 3,
        }
    }

    /// The encoding a tag byte names, if any.
    pub fn from_tag(tag: u8) -> Option<Encoding> {
        match tag {
            0 => Some(Encoding::Packed2Bit),
            1 => Some(Encoding::SparseTernary),
            2 => Some(Encoding::SparseValues),
            3 => Some(Encoding::DenseValues),
            _ => None,
        }
    }

    /// Whether this encoding stores a ternary pattern (and a magnitude).
    pub fn is_ternary(self) -> bool {
        matches!(self, Encoding::Packed2Bit | Encoding::SparseTernary)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Packed2Bit => "packed2bit",
            Encoding::SparseTernary => "sparse",
            Encoding::SparseValues => "sparse-f32",
            Encoding::DenseValues => "dense-f32",
        })
    }
}

/// Per-layer encoding report for `supermask inspect`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// The layer's name.
    pub name: String,
    /// The layer's weight shape.
    pub shape: Vec<usize>,
    /// Number of non-zero entries.
    pub kept: usize,
    /// The encoding the file uses for this layer.
    pub encoding: Encoding,
    /// Bytes of the layer's payload (the weights alone, without name, shape, tag, magnitude
    /// and payload length).
    pub bytes: usize,
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Encodes a model as the bytes of an `.ssm` file, after validating it: shapes have at most
/// [`MAX_NDIM`] dimensions and at most [`MAX_NUMEL`] entries, every weight vector has the
/// length of its shape's product, ternary patterns hold only `-1`, `0`, `1`, magnitudes are
/// finite and `> 0`, and every real value is finite.
pub fn encode(m: &SsmModel) -> Result<Vec<u8>> {
    validate(m)?;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    put_u32(&mut out, VERSION);
    put_u64(&mut out, 0); // total length, patched below

    let json = serde_json::to_vec(&m.model).context("serializing the model header")?;
    put_u32(&mut out, len_u32(json.len(), "the model header")?);
    out.extend_from_slice(&json);

    put_u32(&mut out, len_u32(m.layers.len(), "the layer count")?);
    let mut decoded: u64 = 0;
    for layer in &m.layers {
        put_name(&mut out, &layer.name)?;
        put_shape(&mut out, &layer.shape);
        let numel = layer.numel() as u64;
        let (magnitude, candidates) = match &layer.weights {
            LayerWeights::Ternary { magnitude, pattern } => (
                Some(*magnitude),
                [
                    (Encoding::SparseTernary, sparse_ternary_payload(pattern)),
                    (Encoding::Packed2Bit, packed_payload(pattern)),
                ],
            ),
            LayerWeights::Values(values) => (
                None,
                [
                    (Encoding::SparseValues, sparse_values_payload(values)),
                    (Encoding::DenseValues, dense_values_payload(values)),
                ],
            ),
        };
        let elem: u64 = if magnitude.is_some() { 1 } else { 4 };
        decoded = decoded.saturating_add(numel * elem);
        // Record bytes between here and the payload: tag, optional magnitude, payload length.
        let head = 1 + if magnitude.is_some() { 4 } else { 0 } + 8;
        let [(sparse_enc, sparse), (dense_enc, dense)] = candidates;
        let sparse_end = (out.len() + head + sparse.len()) as u64;
        let sparse_fits = decoded <= DECODE_BUDGET_FACTOR * sparse_end + DECODE_BUDGET_SLACK;
        // Ties go to the dense encoding; so does a sparse encoding over the decode budget.
        let (encoding, payload) = if sparse.len() < dense.len() && sparse_fits {
            (sparse_enc, sparse)
        } else {
            (dense_enc, dense)
        };
        out.push(encoding.tag());
        if let Some(mag) = magnitude {
            put_f32(&mut out, mag);
        }
        put_u64(&mut out, payload.len() as u64);
        out.extend_from_slice(&payload);
    }

    put_u32(&mut out, len_u32(m.tensors.len(), "the tensor count")?);
    for (name, shape, values) in &m.tensors {
        put_name(&mut out, name)?;
        put_shape(&mut out, shape);
        for &v in values {
            put_f32(&mut out, v);
        }
    }

    let total = (out.len() + CHECKSUM_LEN) as u64;
    out[8..16].copy_from_slice(&total.to_le_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Checks everything [`encode`] promises to check.
fn validate(m: &SsmModel) -> Result<()> {
    for layer in &m.layers {
        let what = format!("layer `{}`", layer.name);
        let numel = check_shape(&layer.shape, &what)?;
        match &layer.weights {
            LayerWeights::Ternary { magnitude, pattern } => {
                ensure!(
                    magnitude.is_finite() && *magnitude > 0.0,
                    "{what}: magnitude {magnitude} is not a finite number > 0"
                );
                ensure!(
                    pattern.len() == numel,
                    "{what}: pattern has {} entries, the shape {:?} needs {numel}",
                    pattern.len(),
                    layer.shape
                );
                if let Some(i) = pattern.iter().position(|p| !(-1..=1).contains(p)) {
                    bail!(
                        "{what}: pattern entry {i} is {}, not -1, 0 or 1",
                        pattern[i]
                    );
                }
            }
            LayerWeights::Values(values) => check_values(values, numel, &layer.shape, &what)?,
        }
    }
    for (name, shape, values) in &m.tensors {
        let what = format!("tensor `{name}`");
        let numel = check_shape(shape, &what)?;
        check_values(values, numel, shape, &what)?;
    }
    Ok(())
}

fn check_shape(shape: &[usize], what: &str) -> Result<usize> {
    ensure!(
        shape.len() <= MAX_NDIM,
        "{what}: shape {shape:?} has more than {MAX_NDIM} dimensions"
    );
    let mut numel: u64 = 1;
    for &d in shape {
        ensure!(
            u32::try_from(d).is_ok(),
            "{what}: dimension {d} does not fit in 32 bits"
        );
        numel = numel
            .checked_mul(d as u64)
            .filter(|&n| n <= MAX_NUMEL)
            .with_context(|| format!("{what}: shape {shape:?} has more than 2^31 entries"))?;
    }
    Ok(numel as usize)
}

fn check_values(values: &[f32], numel: usize, shape: &[usize], what: &str) -> Result<()> {
    ensure!(
        values.len() == numel,
        "{what}: {} values, the shape {shape:?} needs {numel}",
        values.len()
    );
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{what}: value {i} is {}, not finite", values[i]);
    }
    Ok(())
}

fn len_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).with_context(|| format!("{what} ({n}) does not fit in 32 bits"))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f32(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<()> {
    put_u32(out, len_u32(name.len(), "a name's length")?);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Writes `ndim: u8` and the dimensions as `u32` (validated beforehand).
fn put_shape(out: &mut Vec<u8>, shape: &[usize]) {
    out.push(shape.len() as u8);
    for &d in shape {
        put_u32(out, d as u32);
    }
}

/// Unsigned LEB128: 7 bits per byte, least significant group first, high bit set on every
/// byte but the last.
fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes the kept count (`u32`) and the gaps of the kept flat indices `kept` (ascending) as
/// varints. The gap of a kept index is its distance from the entry after the previous kept
/// index (from 0 for the first).
fn put_count_and_gaps(out: &mut Vec<u8>, kept: impl Iterator<Item = usize>) {
    let at = out.len();
    put_u32(out, 0);
    let mut count: u32 = 0;
    let mut next = 0usize;
    for i in kept {
        put_varint(out, (i - next) as u32);
        next = i + 1;
        count += 1;
    }
    out[at..at + 4].copy_from_slice(&count.to_le_bytes());
}

/// 2-bit codes of a ternary entry: `0 -> 0b00`, `+1 -> 0b01`, `-1 -> 0b10`.
fn code(p: i8) -> u8 {
    match p {
        1 => 0b01,
        -1 => 0b10,
        _ => 0b00,
    }
}

fn packed_payload(pattern: &[i8]) -> Vec<u8> {
    pattern
        .chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (j, &p)| b | (code(p) << (2 * j)))
        })
        .collect()
}

fn sparse_ternary_payload(pattern: &[i8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_count_and_gaps(
        &mut out,
        pattern
            .iter()
            .enumerate()
            .filter(|(_, &p)| p != 0)
            .map(|(i, _)| i),
    );
    let signs: Vec<bool> = pattern
        .iter()
        .filter(|&&p| p != 0)
        .map(|&p| p < 0)
        .collect();
    out.extend(signs.chunks(8).map(|c| {
        c.iter()
            .enumerate()
            .fold(0u8, |b, (j, &neg)| b | (u8::from(neg) << j))
    }));
    out
}

fn sparse_values_payload(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    put_count_and_gaps(
        &mut out,
        values
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0.0)
            .map(|(i, _)| i),
    );
    for &v in values.iter().filter(|&&v| v != 0.0) {
        put_f32(&mut out, v);
    }
    out
}

fn dense_values_payload(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * values.len());
    for &v in values {
        put_f32(&mut out, v);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Decodes the bytes of an `.ssm` file. Checks, in order: magic, version, the header's
/// total length against the input's, the SHA-256 checksum; only then parses the body, with
/// every count, length, index and shape checked against the bytes that remain before it is
/// used. Never panics, for any input; allocations are bounded by a small multiple of
/// `bytes.len()` (the decode budget, [`DECODE_BUDGET_FACTOR`]).
pub fn decode(bytes: &[u8]) -> Result<SsmModel> {
    parse(bytes).map(|(model, _)| model)
}

/// Decode-level view of a file's masked layers: the encoding each one uses and its payload
/// bytes. Checks the file exactly as [`decode`] does.
pub fn layer_infos(bytes: &[u8]) -> Result<Vec<LayerInfo>> {
    parse(bytes).map(|(_, infos)| infos)
}

/// Encodes `m` and writes it to `path` atomically: the bytes go to a new temporary file in
/// the same directory, which is synced and then renamed over `path`.
pub fn write_file(m: &SsmModel, path: &Path) -> Result<()> {
    let bytes = encode(m).with_context(|| format!("encoding {}", path.display()))?;
    supermask_core::fsio::write_atomic(path, &bytes)
}

/// Reads and decodes the `.ssm` file at `path`; every error names the path.
pub fn read_file(path: &Path) -> Result<SsmModel> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes).with_context(|| format!("{}", path.display()))
}

/// Checks the header and checksum, then parses the body.
fn parse(bytes: &[u8]) -> Result<(SsmModel, Vec<LayerInfo>)> {
    let n = bytes.len();
    if n < MAGIC.len() {
        ensure!(
            bytes == &MAGIC[..n],
            "not a supermask model file (bad magic)"
        );
        bail!("truncated .ssm file: {n} bytes, shorter than the {HEADER_LEN}-byte header");
    }
    ensure!(
        bytes[..4] == MAGIC,
        "not a supermask model file (bad magic)"
    );
    ensure!(
        n >= 8,
        "truncated .ssm file: {n} bytes, shorter than the {HEADER_LEN}-byte header"
    );
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    ensure!(
        version == VERSION,
        "unsupported .ssm version {version} (this build reads version {VERSION})"
    );
    ensure!(
        n >= HEADER_LEN,
        "truncated .ssm file: {n} bytes, shorter than the {HEADER_LEN}-byte header"
    );
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let declared = u64::from_le_bytes(len);
    ensure!(
        declared <= n as u64,
        "truncated .ssm file: {n} bytes, the header says {declared}"
    );
    ensure!(
        declared == n as u64,
        "corrupt .ssm file: {n} bytes, the header says {declared} (bytes appended?)"
    );
    ensure!(
        n >= MIN_FILE_LEN,
        "truncated .ssm file: {n} bytes, shorter than the smallest valid file ({MIN_FILE_LEN})"
    );
    let (body, checksum) = bytes.split_at(n - CHECKSUM_LEN);
    ensure!(
        Sha256::digest(body).as_slice() == checksum,
        "checksum mismatch: the file is corrupted"
    );

    let mut r = Reader {
        buf: body,
        pos: HEADER_LEN,
    };
    let json_len = r.u32("the model header length")? as usize;
    let json = r.take(json_len, "the model header")?;
    let json = std::str::from_utf8(json)
        .map_err(|e| anyhow::anyhow!("corrupt .ssm file: the model header is not UTF-8: {e}"))?;
    let model: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| anyhow::anyhow!("corrupt .ssm file: the model header is not JSON: {e}"))?;

    let layer_count = r.u32("the layer count")?;
    let mut layers = Vec::new();
    let mut infos = Vec::new();
    let mut decoded: u64 = 0;
    for index in 0..layer_count {
        let name = r.name(&format!("layer {index}"))?;
        let what = format!("layer `{name}`");
        let (shape, numel) = r.shape(&what)?;
        let tag = r.u8(&what)?;
        let encoding = Encoding::from_tag(tag)
            .with_context(|| format!("corrupt .ssm file: {what}: unknown encoding tag {tag}"))?;
        let magnitude = if encoding.is_ternary() {
            let m = r.f32(&what)?;
            ensure!(
                m.is_finite() && m > 0.0,
                "corrupt .ssm file: {what}: magnitude {m} is not a finite number > 0"
            );
            Some(m)
        } else {
            None
        };
        let payload_len = r.u64(&what)?;
        let payload = r.take_u64(payload_len, &format!("the payload of {what}"))?;
        // The decode budget, checked before the layer's weights are allocated.
        let elem: u64 = if encoding.is_ternary() { 1 } else { 4 };
        decoded = decoded.saturating_add(numel * elem);
        let limit = DECODE_BUDGET_FACTOR
            .saturating_mul(r.pos as u64)
            .saturating_add(DECODE_BUDGET_SLACK);
        ensure!(
            decoded <= limit,
            "corrupt .ssm file: {what}: {decoded} decoded weight bytes so far exceed the \
             decode budget of {limit} at offset {} ({DECODE_BUDGET_FACTOR} x offset + \
             {DECODE_BUDGET_SLACK})",
            r.pos
        );
        let numel = numel as usize;
        let (weights, kept) = match (encoding, magnitude) {
            (Encoding::Packed2Bit, Some(magnitude)) => {
                let (pattern, kept) = decode_packed(payload, numel, &what)?;
                (LayerWeights::Ternary { magnitude, pattern }, kept)
            }
            (Encoding::SparseTernary, Some(magnitude)) => {
                let (pattern, kept) = decode_sparse_ternary(payload, numel, &what)?;
                (LayerWeights::Ternary { magnitude, pattern }, kept)
            }
            (Encoding::SparseValues, _) => {
                let (values, kept) = decode_sparse_values(payload, numel, &what)?;
                (LayerWeights::Values(values), kept)
            }
            (_, _) => {
                let (values, kept) = decode_dense_values(payload, numel, &what)?;
                (LayerWeights::Values(values), kept)
            }
        };
        infos.push(LayerInfo {
            name: name.clone(),
            shape: shape.clone(),
            kept,
            encoding,
            bytes: payload.len(),
        });
        layers.push(SsmLayer {
            name,
            shape,
            weights,
        });
    }

    let tensor_count = r.u32("the tensor count")?;
    let mut tensors = Vec::new();
    for index in 0..tensor_count {
        let name = r.name(&format!("tensor {index}"))?;
        let what = format!("tensor `{name}`");
        let (shape, numel) = r.shape(&what)?;
        let data = r.take_u64(4 * numel, &format!("the values of {what}"))?;
        let values = f32s(data, &what)?;
        tensors.push((name, shape, values));
    }
    let rest = body.len() - r.pos;
    ensure!(
        rest == 0,
        "corrupt .ssm file: {rest} unexpected bytes after the last tensor"
    );
    Ok((
        SsmModel {
            model,
            layers,
            tensors,
        },
        infos,
    ))
}

/// A cursor over the body (`pos` is an offset in the whole file; the body ends where the
/// checksum begins).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        ensure!(
            n <= rest,
            "corrupt .ssm file: {what} at offset {} needs {n} bytes, only {rest} remain \
             before the checksum",
            self.pos
        );
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_u64(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        self.take(usize::try_from(n).unwrap_or(usize::MAX), what)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }

    fn f32(&mut self, what: &str) -> Result<f32> {
        self.u32(what).map(f32::from_bits)
    }

    fn name(&mut self, what: &str) -> Result<String> {
        let len = self.u32(what)? as usize;
        let raw = self.take(len, &format!("the name of {what}"))?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => bail!("corrupt .ssm file: the name of {what} is not UTF-8"),
        }
    }

    /// Reads `ndim: u8` and `ndim` `u32` dimensions; returns the shape and its checked
    /// product (at most [`MAX_NUMEL`]).
    fn shape(&mut self, what: &str) -> Result<(Vec<usize>, u64)> {
        let ndim = self.u8(what)? as usize;
        ensure!(
            ndim <= MAX_NDIM,
            "corrupt .ssm file: {what}: {ndim} dimensions, at most {MAX_NDIM} allowed"
        );
        let mut shape = Vec::with_capacity(ndim);
        let mut numel: u64 = 1;
        for _ in 0..ndim {
            let d = self.u32(what)?;
            numel = numel
                .checked_mul(u64::from(d))
                .filter(|&n| n <= MAX_NUMEL)
                .with_context(|| {
                    format!("corrupt .ssm file: {what}: the shape has more than 2^31 entries")
                })?;
            shape.push(d as usize);
        }
        Ok((shape, numel))
    }
}

/// Reads one canonical LEB128 varint of at most 32 bits from `buf` at `*pos`.
fn read_varint(buf: &[u8], pos: &mut usize, what: &str) -> Result<u32> {
    let mut v: u64 = 0;
    for k in 0..5 {
        let Some(&b) = buf.get(*pos) else {
            bail!("corrupt .ssm file: {what}: an index gap runs past its bytes");
        };
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            ensure!(
                k == 0 || b != 0,
                "corrupt .ssm file: {what}: non-canonical varint (trailing zero byte)"
            );
            return u32::try_from(v).map_err(|_| {
                anyhow::anyhow!("corrupt .ssm file: {what}: index gap exceeds 32 bits")
            });
        }
    }
    bail!("corrupt .ssm file: {what}: varint longer than 5 bytes")
}

/// Splits a sparse payload into its kept count, the gap bytes and the trailing
/// `tail_len(kept)` bytes (sign bits or values), after checking that the kept count is at
/// most `numel` and that `kept` gaps of at least one byte each plus the tail fit.
fn split_sparse<'a>(
    payload: &'a [u8],
    numel: usize,
    tail_len: impl Fn(usize) -> usize,
    what: &str,
) -> Result<(usize, &'a [u8], &'a [u8])> {
    ensure!(
        payload.len() >= 4,
        "corrupt .ssm file: {what}: the payload of {} bytes has no kept count",
        payload.len()
    );
    let kept = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    ensure!(
        kept <= numel,
        "corrupt .ssm file: {what}: kept count {kept} exceeds the layer's {numel} entries"
    );
    // Each gap takes at least one byte.
    let rest = payload.len() - 4;
    let tail = tail_len(kept);
    ensure!(
        kept.checked_add(tail).is_some_and(|need| need <= rest),
        "corrupt .ssm file: {what}: kept count {kept} does not fit in the payload of {} bytes",
        payload.len()
    );
    let (gaps, tail) = payload[4..].split_at(rest - tail);
    Ok((kept, gaps, tail))
}

/// Walks the gaps of a sparse payload, calling `f(j, index)` for the `j`-th kept index.
fn walk_gaps(
    gaps: &[u8],
    kept: usize,
    numel: usize,
    what: &str,
    mut f: impl FnMut(usize, usize) -> Result<()>,
) -> Result<()> {
    let mut pos = 0usize;
    let mut next = 0usize;
    for j in 0..kept {
        let gap = read_varint(gaps, &mut pos, what)? as usize;
        let index = next.saturating_add(gap);
        ensure!(
            index < numel,
            "corrupt .ssm file: {what}: kept index {index} is past the end of the layer \
             ({numel} entries)"
        );
        f(j, index)?;
        next = index + 1;
    }
    ensure!(
        pos == gaps.len(),
        "corrupt .ssm file: {what}: {} unused bytes after the index gaps",
        gaps.len() - pos
    );
    Ok(())
}

fn decode_packed(payload: &[u8], numel: usize, what: &str) -> Result<(Vec<i8>, usize)> {
    let need = numel.div_ceil(4);
    ensure!(
        payload.len() == need,
        "corrupt .ssm file: {what}: 2-bit payload has {} bytes, {numel} entries need {need}",
        payload.len()
    );
    let mut pattern = Vec::with_capacity(numel);
    for (b, &byte) in payload.iter().enumerate() {
        for j in 0..4 {
            let c = (byte >> (2 * j)) & 0b11;
            if 4 * b + j >= numel {
                ensure!(
                    c == 0,
                    "corrupt .ssm file: {what}: non-zero padding bits in the 2-bit payload"
                );
                continue;
            }
            pattern.push(match c {
                0b00 => 0,
                0b01 => 1,
                0b10 => -1,
                _ => bail!(
                    "corrupt .ssm file: {what}: invalid 2-bit code 0b11 at entry {}",
                    4 * b + j
                ),
            });
        }
    }
    let kept = pattern.iter().filter(|&&p| p != 0).count();
    Ok((pattern, kept))
}

fn decode_sparse_ternary(payload: &[u8], numel: usize, what: &str) -> Result<(Vec<i8>, usize)> {
    let (kept, gaps, signs) = split_sparse(payload, numel, |k| k.div_ceil(8), what)?;
    if kept % 8 != 0 {
        ensure!(
            signs[kept / 8] >> (kept % 8) == 0,
            "corrupt .ssm file: {what}: non-zero padding bits after the sign bits"
        );
    }
    let mut pattern = vec![0i8; numel];
    walk_gaps(gaps, kept, numel, what, |j, index| {
        pattern[index] = if (signs[j / 8] >> (j % 8)) & 1 == 1 {
            -1
        } else {
            1
        };
        Ok(())
    })?;
    Ok((pattern, kept))
}

fn decode_sparse_values(payload: &[u8], numel: usize, what: &str) -> Result<(Vec<f32>, usize)> {
    let (kept, gaps, data) = split_sparse(payload, numel, |k| k.saturating_mul(4), what)?;
    let mut values = vec![0f32; numel];
    walk_gaps(gaps, kept, numel, what, |j, index| {
        let v = f32::from_le_bytes([
            data[4 * j],
            data[4 * j + 1],
            data[4 * j + 2],
            data[4 * j + 3],
        ]);
        ensure!(
            v.is_finite() && v != 0.0,
            "corrupt .ssm file: {what}: kept value {j} is {v}, not a finite non-zero number"
        );
        values[index] = v;
        Ok(())
    })?;
    Ok((values, kept))
}

fn decode_dense_values(payload: &[u8], numel: usize, what: &str) -> Result<(Vec<f32>, usize)> {
    ensure!(
        payload.len() as u64 == 4 * numel as u64,
        "corrupt .ssm file: {what}: dense payload has {} bytes, {numel} entries need {}",
        payload.len(),
        4 * numel as u64
    );
    let values = f32s(payload, what)?;
    let kept = values.iter().filter(|&&v| v != 0.0).count();
    Ok((values, kept))
}

/// Little-endian `f32`s, all finite.
fn f32s(data: &[u8], what: &str) -> Result<Vec<f32>> {
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "corrupt .ssm file: {what}: value {i} is {}, not finite",
            values[i]
        );
    }
    Ok(values)
}
