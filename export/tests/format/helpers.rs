//! Generators, the layout computed independently of the encoder, and sealing helpers.

use proptest::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use supermask_export::format::{
    decode, encode, layer_infos, Encoding, DECODE_BUDGET_FACTOR, DECODE_BUDGET_SLACK, MAGIC,
    VERSION,
};
use supermask_export::{LayerWeights, SsmLayer, SsmModel};

/// SplitMix64: a tiny deterministic generator so that big patterns come from one seed
/// instead of one proptest value per entry.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A layer whose entries are kept with probability `density`, each kept sign `+` or `-`
/// with probability 1/2; real values are non-zero numbers in `(-4, 4)`.
pub(crate) fn random_layer(
    name: String,
    shape: Vec<usize>,
    seed: u64,
    density: f64,
    ternary: bool,
) -> SsmLayer {
    let mut rng = SplitMix(seed);
    let n: usize = shape.iter().product();
    let weights = if ternary {
        let pattern = (0..n)
            .map(|_| match (rng.unit() < density, rng.next() & 1) {
                (false, _) => 0,
                (true, 0) => 1,
                (true, _) => -1,
            })
            .collect();
        LayerWeights::Ternary {
            magnitude: 0.01 + rng.unit() as f32,
            pattern,
        }
    } else {
        let values = (0..n)
            .map(|_| {
                if rng.unit() < density {
                    let v = (rng.unit() as f32 + 1e-3) * 4.0;
                    if rng.next() & 1 == 0 {
                        v
                    } else {
                        -v
                    }
                } else {
                    0.0
                }
            })
            .collect();
        LayerWeights::Values(values)
    };
    SsmLayer {
        name,
        shape,
        weights,
    }
}

pub(crate) fn layer_strategy(max_dim: usize) -> impl Strategy<Value = SsmLayer> {
    (
        "\\PC{0,8}",
        prop::collection::vec(1..=max_dim, 1..=4),
        any::<u64>(),
        prop_oneof![Just(0.0), Just(1.0), 0.0..1.0f64, 0.0..0.05f64],
        any::<bool>(),
    )
        .prop_map(|(name, shape, seed, density, ternary)| {
            random_layer(name, shape, seed, density, ternary)
        })
}

pub(crate) fn tensor_strategy() -> impl Strategy<Value = (String, Vec<usize>, Vec<f32>)> {
    ("[a-z0-9.]{1,10}", prop::collection::vec(1usize..=6, 0..=2)).prop_flat_map(|(name, shape)| {
        let n: usize = shape.iter().product();
        let values = prop::collection::vec(-1e3f32..1e3, n);
        (Just(name), Just(shape), values)
    })
}

pub(crate) fn model_strategy(max_dim: usize) -> impl Strategy<Value = SsmModel> {
    (
        prop::collection::vec(layer_strategy(max_dim), 1..=4),
        prop::collection::vec(tensor_strategy(), 0..=3),
        "[a-z]{1,8}",
        prop::collection::vec(0u32..1000, 0..4),
        any::<bool>(),
        -8i32..8,
    )
        .prop_map(|(layers, tensors, kind, hidden, bn, q)| SsmModel {
            // Quarters are exact in binary and print exactly, so the JSON round-trips.
            model: json!({ "type": kind, "hidden": hidden, "bn": bn, "scale": q as f64 / 4.0 }),
            layers,
            tensors,
        })
}

/// LEB128 length of `v`: one byte per started group of 7 bits.
pub(crate) fn varint_len(mut v: usize) -> usize {
    let mut len = 1;
    while v >= 0x80 {
        v >>= 7;
        len += 1;
    }
    len
}

/// Sum of the varint lengths of the gaps between kept indices (gap = index - (previous
/// kept index + 1), the first gap = the first index).
pub(crate) fn gap_bytes(kept: impl Iterator<Item = usize>) -> usize {
    let mut next = 0;
    let mut bytes = 0;
    for i in kept {
        bytes += varint_len(i - next);
        next = i + 1;
    }
    bytes
}

/// `(sparse encoding, its payload bytes, dense encoding, its payload bytes, bytes per
/// decoded entry)` of a layer, from the formulas in the module comment.
pub(crate) fn candidate_sizes(layer: &SsmLayer) -> (Encoding, usize, Encoding, usize, usize) {
    let n = layer.numel();
    match &layer.weights {
        LayerWeights::Ternary { pattern, .. } => {
            let k = pattern.iter().filter(|&&p| p != 0).count();
            let gaps = gap_bytes((0..n).filter(|&i| pattern[i] != 0));
            (
                Encoding::SparseTernary,
                4 + gaps + k.div_ceil(8),
                Encoding::Packed2Bit,
                n.div_ceil(4),
                1,
            )
        }
        LayerWeights::Values(v) => {
            let k = v.iter().filter(|&&x| x != 0.0).count();
            let gaps = gap_bytes((0..n).filter(|&i| v[i] != 0.0));
            (
                Encoding::SparseValues,
                4 + gaps + 4 * k,
                Encoding::DenseValues,
                4 * n,
                4,
            )
        }
    }
}

/// The expected `(encoding, payload bytes)` per layer and the expected file length: each
/// layer takes the strictly smaller encoding unless the sparse one would break the decode
/// budget (`decoded bytes so far <= FACTOR * payload end offset + SLACK`).
pub(crate) fn expected_layout(m: &SsmModel) -> (Vec<(Encoding, usize)>, usize) {
    let json_len = serde_json::to_vec(&m.model).unwrap().len();
    // header + json length + json + layer count
    let mut offset = 16 + 4 + json_len + 4;
    let mut decoded = 0usize;
    let mut chosen = Vec::new();
    for layer in &m.layers {
        let ternary = matches!(layer.weights, LayerWeights::Ternary { .. });
        // name length + name + ndim + dims + tag + magnitude (ternary) + payload length
        offset +=
            4 + layer.name.len() + 1 + 4 * layer.shape.len() + 1 + if ternary { 4 } else { 0 } + 8;
        let (sparse_enc, sparse, dense_enc, dense, elem) = candidate_sizes(layer);
        decoded += elem * layer.numel();
        let budget =
            DECODE_BUDGET_FACTOR as usize * (offset + sparse) + DECODE_BUDGET_SLACK as usize;
        let pick = if sparse < dense && decoded <= budget {
            (sparse_enc, sparse)
        } else {
            (dense_enc, dense)
        };
        offset += pick.1;
        chosen.push(pick);
    }
    offset += 4; // tensor count
    for (name, shape, values) in &m.tensors {
        offset += 4 + name.len() + 1 + 4 * shape.len() + 4 * values.len();
    }
    (chosen, offset + 32)
}

/// Replaces the length field and the checksum of `bytes` (at least 16 + 32 long) so that
/// they are valid for its current content.
pub(crate) fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    bytes[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    let digest = Sha256::digest(&bytes[..n - 32]);
    bytes[n - 32..].copy_from_slice(&digest);
}

/// A whole file around `body` (everything between the 16-byte header and the checksum).
pub(crate) fn seal(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&[0; 32]);
    reseal(&mut bytes);
    bytes
}

pub(crate) fn err_of(bytes: &[u8]) -> String {
    format!("{:#}", decode(bytes).expect_err("decode should fail"))
}

/// The decoder's contract on any input: `Ok` or `Err`, never a panic (a panic fails the
/// proptest case); `layer_infos` agrees; a model it accepts re-encodes, and its weights
/// decode back unchanged. (The JSON header is only required to decode again: a mutated
/// JSON float need not survive serde_json's default, best-effort float parsing exactly.)
pub(crate) fn check_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoded = decode(bytes);
    let infos = layer_infos(bytes);
    prop_assert_eq!(decoded.is_ok(), infos.is_ok());
    if let Ok(m) = decoded {
        let again = encode(&m).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let back = decode(&again).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(back.layers, m.layers);
        prop_assert_eq!(back.tensors, m.tensors);
    }
    Ok(())
}

pub(crate) fn small_model() -> SsmModel {
    SsmModel {
        model: json!({"type": "fcn", "hidden": [3]}),
        layers: vec![
            random_layer("fc1".into(), vec![3, 20], 1, 0.1, true),
            random_layer("fc2".into(), vec![4, 3], 2, 0.9, true),
            random_layer("fc3".into(), vec![2, 4], 3, 0.5, false),
        ],
        tensors: vec![("bn.scale".into(), vec![3], vec![1.0, 0.5, -2.0])],
    }
}
