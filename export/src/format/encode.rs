//! Writing: validation and the choice of the smaller encoding for each masked layer.

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::{
    Encoding, CHECKSUM_LEN, DECODE_BUDGET_FACTOR, DECODE_BUDGET_SLACK, MAGIC, MAX_NDIM, MAX_NUMEL,
    VERSION,
};
use crate::model::{LayerWeights, SsmModel};

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
