//! Reading: header and checksum first, then the body with every count, length, index and
//! shape checked against the bytes that remain.

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::{
    Encoding, LayerInfo, CHECKSUM_LEN, DECODE_BUDGET_FACTOR, DECODE_BUDGET_SLACK, HEADER_LEN,
    MAGIC, MAX_NDIM, MAX_NUMEL, MIN_FILE_LEN, VERSION,
};
use crate::model::{LayerWeights, SsmLayer, SsmModel};

/// Checks the header and checksum, then parses the body.
pub(super) fn parse(bytes: &[u8]) -> Result<(SsmModel, Vec<LayerInfo>)> {
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
