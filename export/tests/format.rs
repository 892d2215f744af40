//! Tests of the `.ssm` binary encoding (`supermask_export::format`, `docs/format.md`):
//! round trips, the choice of the smaller encoding, the exact bytes of the documented
//! example, specific errors, size sanity, and the fuzz properties of the decoder.
//!
//! Every expected size below is computed from the layout in `docs/format.md`, independently
//! of the encoder: header 16 bytes, checksum 32, a layer record `4 + name + 1 + 4 * ndim + 1
//! (+ 4 magnitude if ternary) + 8 + payload`, 2-bit payload `ceil(n / 4)`, sparse ternary
//! payload `4 + sum(varint_len(gap)) + ceil(k / 8)`, sparse values `4 + sum(varint_len(gap))
//! + 4 k`, dense values `4 n`.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use supermask_export::format::{
    decode, encode, layer_infos, read_file, write_file, Encoding, DECODE_BUDGET_FACTOR,
    DECODE_BUDGET_SLACK, MAGIC, VERSION,
};
use supermask_export::{LayerWeights, SsmLayer, SsmModel};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator so that big patterns come from one seed
/// instead of one proptest value per entry.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A layer whose entries are kept with probability `density`, each kept sign `+` or `-`
/// with probability 1/2; real values are non-zero numbers in `(-4, 4)`.
fn random_layer(
    name: String,
    shape: Vec<usize>,
    seed: u64,
    density: f64,
    ternary: bool,
) -> SsmLayer {
    let mut rng = Rng(seed);
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

fn layer_strategy(max_dim: usize) -> impl Strategy<Value = SsmLayer> {
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

fn tensor_strategy() -> impl Strategy<Value = (String, Vec<usize>, Vec<f32>)> {
    ("[a-z0-9.]{1,10}", prop::collection::vec(1usize..=6, 0..=2)).prop_flat_map(|(name, shape)| {
        let n: usize = shape.iter().product();
        let values = prop::collection::vec(-1e3f32..1e3, n);
        (Just(name), Just(shape), values)
    })
}

fn model_strategy(max_dim: usize) -> impl Strategy<Value = SsmModel> {
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
fn varint_len(mut v: usize) -> usize {
    let mut len = 1;
    while v >= 0x80 {
        v >>= 7;
        len += 1;
    }
    len
}

/// Sum of the varint lengths of the gaps between kept indices (gap = index - (previous
/// kept index + 1), the first gap = the first index).
fn gap_bytes(kept: impl Iterator<Item = usize>) -> usize {
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
fn candidate_sizes(layer: &SsmLayer) -> (Encoding, usize, Encoding, usize, usize) {
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
fn expected_layout(m: &SsmModel) -> (Vec<(Encoding, usize)>, usize) {
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
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    bytes[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    let digest = Sha256::digest(&bytes[..n - 32]);
    bytes[n - 32..].copy_from_slice(&digest);
}

/// A whole file around `body` (everything between the 16-byte header and the checksum).
fn seal(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&[0; 32]);
    reseal(&mut bytes);
    bytes
}

fn err_of(bytes: &[u8]) -> String {
    format!("{:#}", decode(bytes).expect_err("decode should fail"))
}

/// The decoder's contract on any input: `Ok` or `Err`, never a panic (a panic fails the
/// proptest case); `layer_infos` agrees; a model it accepts re-encodes, and its weights
/// decode back unchanged. (The JSON header is only required to decode again: a mutated
/// JSON float need not survive serde_json's default, best-effort float parsing exactly.)
fn check_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
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

fn small_model() -> SsmModel {
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

// ---------------------------------------------------------------------------------------
// Round trip and choice of encoding
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// encode -> decode is the identity; every layer uses the smaller encoding (unless the
    /// decode budget forbids the sparse one); the file length matches the layout.
    #[test]
    fn round_trip(m in model_strategy(20)) {
        let bytes = encode(&m).unwrap();
        prop_assert_eq!(&decode(&bytes).unwrap(), &m);

        let (expected, total) = expected_layout(&m);
        prop_assert_eq!(bytes.len(), total);
        let infos = layer_infos(&bytes).unwrap();
        prop_assert_eq!(infos.len(), m.layers.len());
        for ((info, layer), (encoding, payload)) in infos.iter().zip(&m.layers).zip(expected) {
            prop_assert_eq!(&info.name, &layer.name);
            prop_assert_eq!(&info.shape, &layer.shape);
            prop_assert_eq!(info.kept, layer.kept());
            prop_assert_eq!(info.encoding, encoding);
            prop_assert_eq!(info.bytes, payload);
        }
    }
}

#[test]
fn empty_model_round_trips() {
    let m = SsmModel {
        model: json!(null),
        layers: vec![],
        tensors: vec![],
    };
    let bytes = encode(&m).unwrap();
    // header 16 + json length 4 + "null" 4 + layer count 4 + tensor count 4 + checksum 32
    assert_eq!(bytes.len(), 16 + 4 + 4 + 4 + 4 + 32);
    assert_eq!(decode(&bytes).unwrap(), m);
}

/// The worked example of `docs/format.md`, byte for byte.
#[test]
fn documented_example_bytes() {
    let m = SsmModel {
        model: json!({"type": "toy"}),
        layers: vec![
            SsmLayer {
                name: "fc".into(),
                shape: vec![2, 3],
                weights: LayerWeights::Ternary {
                    magnitude: 0.5,
                    pattern: vec![1, 0, -1, 0, 0, 1],
                },
            },
            SsmLayer {
                name: "out".into(),
                shape: vec![1, 40],
                weights: LayerWeights::Ternary {
                    magnitude: 0.25,
                    pattern: (0..40)
                        .map(|i| match i {
                            3 | 39 => 1,
                            20 => -1,
                            _ => 0,
                        })
                        .collect(),
                },
            },
            SsmLayer {
                name: "v".into(),
                shape: vec![4],
                weights: LayerWeights::Values(vec![0.0, 1.5, 0.0, 0.0]),
            },
        ],
        tensors: vec![("bn.scale".into(), vec![2], vec![1.0, -2.0])],
    };
    // Written by hand from the specification (and cross-checked with a Python script that
    // packs the same fields with `struct.pack('<...')` and `hashlib.sha256`).
    let expected = "53534d4b01000000c2000000000000000e0000007b2274797065223a22746f79227d03000000\
                    020000006663020200000003000000000000003f0200000000000000210403000000\
                    6f7574020100000028000000010000803e0800000000000000030000000310120201\
                    00000076010400000002090000000000000001000000010000c03f01000000080000\
                    00626e2e7363616c6501020000000000803f000000c05e414dddb81fe3038ee4b8af\
                    a84c55c01761bcc61da8286290d768fd7d759592";
    let bytes = encode(&m).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected);
    assert_eq!(decode(&bytes).unwrap(), m);
    let infos = layer_infos(&bytes).unwrap();
    let summary: Vec<_> = infos
        .iter()
        .map(|i| (i.encoding, i.bytes, i.kept))
        .collect();
    // fc: 2-bit, ceil(6/4) = 2 bytes (sparse would be 4 + 3 + 1 = 8); out: sparse,
    // 4 + 3 + 1 = 8 bytes (2-bit would be 10); v: sparse values 4 + 1 + 4 = 9 (dense 16).
    assert_eq!(
        summary,
        vec![
            (Encoding::Packed2Bit, 2, 3),
            (Encoding::SparseTernary, 8, 3),
            (Encoding::SparseValues, 9, 1)
        ]
    );
    assert_eq!(
        infos
            .iter()
            .map(|i| i.encoding.to_string())
            .collect::<Vec<_>>(),
        ["packed2bit", "sparse", "sparse-f32"]
    );
}

// ---------------------------------------------------------------------------------------
// Size sanity
// ---------------------------------------------------------------------------------------

/// A 300x784 layer with 2.5% kept (the paper's FCN first layer at its sparsity) is stored
/// sparse, at little more than one byte per kept index plus one sign bit.
#[test]
fn sparse_layer_is_small() {
    let layer = random_layer("fc1".into(), vec![300, 784], 7, 0.025, true);
    let k = layer.kept();
    let n = 300 * 784;
    let m = SsmModel {
        model: json!({}),
        layers: vec![layer.clone()],
        tensors: vec![],
    };
    let info = &layer_infos(&encode(&m).unwrap()).unwrap()[0];
    assert_eq!(info.encoding, Encoding::SparseTernary);
    let (_, sparse, _, packed, _) = candidate_sizes(&layer);
    assert_eq!(info.bytes, sparse);
    // Gaps average ~40 < 128, so almost all varints are one byte: well under 2 bytes per
    // kept entry, and far under the 2-bit size n / 4.
    let index_bytes = info.bytes - 4 - k.div_ceil(8);
    assert!(
        index_bytes * 10 < k * 11,
        "{index_bytes} index bytes for {k} kept entries"
    );
    assert!(info.bytes < 2 * k + k.div_ceil(8));
    assert_eq!(packed, n / 4);
    assert!(info.bytes * 8 < packed, "{} vs {packed}", info.bytes);
}

/// At 73% kept the 2-bit encoding, n / 4 bytes, is smaller than one byte per kept index.
#[test]
fn dense_layer_is_packed() {
    let layer = random_layer("fc1".into(), vec![300, 784], 8, 0.73, true);
    let m = SsmModel {
        model: json!({}),
        layers: vec![layer],
        tensors: vec![],
    };
    let info = &layer_infos(&encode(&m).unwrap()).unwrap()[0];
    assert_eq!(info.encoding, Encoding::Packed2Bit);
    assert_eq!(info.bytes, 300 * 784 / 4);
}

/// An all-zero layer too big for the decode budget is stored dense; a small one sparse.
#[test]
fn budget_fallback() {
    let zero = |shape: Vec<usize>| SsmLayer {
        name: "z".into(),
        weights: LayerWeights::Ternary {
            magnitude: 1.0,
            pattern: vec![0; shape.iter().product()],
        },
        shape,
    };
    // 1000 * 1000 decoded bytes > 256 * (~60-byte file) + 65536: the sparse encoding (4
    // bytes) would be refused by the decoder, so the encoder uses 2-bit (250000 bytes).
    let m = SsmModel {
        model: json!({}),
        layers: vec![zero(vec![1000, 1000])],
        tensors: vec![],
    };
    let bytes = encode(&m).unwrap();
    let info = &layer_infos(&bytes).unwrap()[0];
    assert_eq!((info.encoding, info.bytes), (Encoding::Packed2Bit, 250_000));
    assert_eq!(decode(&bytes).unwrap(), m);
    // 100 * 100 decoded bytes <= 65536: sparse, just the 4-byte kept count 0.
    let m = SsmModel {
        model: json!({}),
        layers: vec![zero(vec![100, 100])],
        tensors: vec![],
    };
    let info = &layer_infos(&encode(&m).unwrap()).unwrap()[0];
    assert_eq!((info.encoding, info.bytes), (Encoding::SparseTernary, 4));
}

// ---------------------------------------------------------------------------------------
// Specific errors
// ---------------------------------------------------------------------------------------

#[test]
fn bad_magic() {
    let mut bytes = encode(&small_model()).unwrap();
    bytes[0] = b'X';
    assert_eq!(err_of(&bytes), "not a supermask model file (bad magic)");
    assert_eq!(
        err_of(b"PK\x03\x04 a zip file"),
        "not a supermask model file (bad magic)"
    );
}

#[test]
fn wrong_version() {
    let mut bytes = encode(&small_model()).unwrap();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(
        err_of(&bytes),
        "unsupported .ssm version 7 (this build reads version 1)"
    );
}

#[test]
fn flipped_byte_fails_the_checksum() {
    let bytes = encode(&small_model()).unwrap();
    for i in [20, bytes.len() / 2, bytes.len() - 33, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert_eq!(
            err_of(&b),
            "checksum mismatch: the file is corrupted",
            "byte {i}"
        );
    }
}

#[test]
fn truncated_and_extended() {
    let bytes = encode(&small_model()).unwrap();
    for len in [0, 2, 6, 12, 16, 40, bytes.len() - 1] {
        let e = err_of(&bytes[..len]);
        assert!(e.starts_with("truncated .ssm file: "), "{len}: {e}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(err_of(&longer).contains("appended"));
}

/// Offset of the first layer's payload length field in a file of `m` (one ternary layer):
/// header 16 + json length 4 + json + layer count 4 + name length 4 + name + ndim 1 +
/// dims 4 * ndim + tag 1 + magnitude 4.
fn first_payload_len_offset(m: &SsmModel) -> usize {
    let l = &m.layers[0];
    16 + 4
        + serde_json::to_vec(&m.model).unwrap().len()
        + 4
        + 4
        + l.name.len()
        + 1
        + 4 * l.shape.len()
        + 1
        + 4
}

fn assert_fast_err(bytes: &[u8], needle: &str) {
    let start = Instant::now();
    let e = err_of(bytes);
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn forged_counts_and_shapes_with_valid_checksum() {
    let m = SsmModel {
        model: json!({}),
        layers: vec![random_layer("l".into(), vec![10, 100], 3, 0.02, true)],
        tensors: vec![],
    };
    let bytes = encode(&m).unwrap();
    assert_eq!(
        layer_infos(&bytes).unwrap()[0].encoding,
        Encoding::SparseTernary
    );
    let at = first_payload_len_offset(&m);

    // Kept count u32::MAX: more than the layer's 1000 entries.
    let mut b = bytes.clone();
    b[at + 8..at + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert_fast_err(&b, "exceeds the layer's 1000 entries");

    // Kept count 1000 (<= numel) but far more than the payload's bytes can hold.
    let mut b = bytes.clone();
    b[at + 8..at + 12].copy_from_slice(&1000u32.to_le_bytes());
    reseal(&mut b);
    assert_fast_err(&b, "does not fit in the payload");

    // Payload length u64::MAX.
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    assert_fast_err(&b, "remain before the checksum");

    // Shape [u32::MAX, 100]: the product overflows the 2^31 cap.
    let mut b = bytes.clone();
    let dims = at - 4 - 1 - 8;
    b[dims..dims + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert_fast_err(&b, "more than 2^31 entries");

    // Shape [2^21, 100] = 209715200 entries (under the 2^31 cap) with the same few bytes of
    // sparse payload: decoding would allocate 200 MB of pattern from a ~100-byte file, far
    // past the budget 256 * offset + 65536.
    let mut b = bytes.clone();
    b[dims..dims + 4].copy_from_slice(&(1u32 << 21).to_le_bytes());
    reseal(&mut b);
    assert_fast_err(&b, "decode budget");

    // Forged layer / tensor counts and JSON length in a hand-built body.
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"{}");
    body.extend_from_slice(&u32::MAX.to_le_bytes()); // layer count
    body.extend_from_slice(&[0; 4]); // room for a tensor count, read as a name length
    assert_fast_err(&seal(&body), "remain before the checksum");
    let mut body = Vec::new();
    body.extend_from_slice(&u32::MAX.to_le_bytes()); // json length
    body.extend_from_slice(&[0; 8]);
    assert_fast_err(&seal(&body), "the model header");
    // A tensor claiming 2^31 entries.
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"{}");
    body.extend_from_slice(&0u32.to_le_bytes()); // no layers
    body.extend_from_slice(&1u32.to_le_bytes()); // one tensor
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(b"t");
    body.push(2);
    body.extend_from_slice(&(1u32 << 16).to_le_bytes());
    body.extend_from_slice(&(1u32 << 15).to_le_bytes());
    assert_fast_err(&seal(&body), "needs 8589934592 bytes");
}

#[test]
fn structural_errors_with_valid_checksum() {
    let json_body = |rest: &[u8]| {
        let mut body = Vec::new();
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"{}");
        body.extend_from_slice(rest);
        seal(&body)
    };
    // Invalid JSON / UTF-8 in the model header.
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"{x");
    body.extend_from_slice(&[0; 8]);
    assert!(err_of(&seal(&body)).contains("not JSON"));
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(&[0; 8]);
    assert!(err_of(&seal(&body)).contains("not UTF-8"));

    // One layer "a", shape [5], then `tail` (tag, magnitude, payload length, payload).
    let layer = |tail: &[u8]| {
        let mut rest = Vec::new();
        rest.extend_from_slice(&1u32.to_le_bytes());
        rest.extend_from_slice(&1u32.to_le_bytes());
        rest.extend_from_slice(b"a");
        rest.push(1);
        rest.extend_from_slice(&5u32.to_le_bytes());
        rest.extend_from_slice(tail);
        rest.extend_from_slice(&0u32.to_le_bytes()); // no tensors
        json_body(&rest)
    };
    let ternary = |tag: u8, payload: &[u8]| {
        let mut t = vec![tag];
        t.extend_from_slice(&1f32.to_le_bytes());
        t.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        t.extend_from_slice(payload);
        layer(&t)
    };
    // Valid: 2-bit [+1, 0, -1, 0, +1] = 0b00_10_00_01, 0b01.
    let ok = decode(&ternary(0, &[0x21, 0x01])).unwrap();
    assert_eq!(
        ok.layers[0].weights,
        LayerWeights::Ternary {
            magnitude: 1.0,
            pattern: vec![1, 0, -1, 0, 1]
        }
    );
    // 2-bit: pattern length != numel (ceil(5/4) = 2 bytes needed), code 0b11, padding bits.
    assert!(err_of(&ternary(0, &[0x21])).contains("entries need 2"));
    assert!(err_of(&ternary(0, &[0x03, 0x00])).contains("0b11"));
    assert!(err_of(&ternary(0, &[0x21, 0x05])).contains("padding"));
    // Sparse: index past the end (gap 5 from 0), unused bytes, non-canonical varint.
    assert!(err_of(&ternary(1, &[1, 0, 0, 0, 5, 0])).contains("past the end"));
    assert!(err_of(&ternary(1, &[1, 0, 0, 0, 1, 1, 0])).contains("unused bytes"));
    assert!(err_of(&ternary(1, &[1, 0, 0, 0, 0x81, 0x00, 0])).contains("non-canonical"));
    assert!(err_of(&ternary(1, &[1, 0, 0, 0, 1, 0x02])).contains("padding"));
    // Unknown tag; bad magnitude.
    assert!(err_of(&ternary(9, &[])).contains("unknown encoding tag 9"));
    let mut t = vec![0];
    t.extend_from_slice(&0f32.to_le_bytes());
    t.extend_from_slice(&2u64.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    assert!(err_of(&layer(&t)).contains("magnitude"));
    // Sparse values: a stored zero, a NaN.
    let values = |v: f32| {
        let mut t = vec![2];
        t.extend_from_slice(&9u64.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.push(0);
        t.extend_from_slice(&v.to_le_bytes());
        layer(&t)
    };
    assert!(decode(&values(2.0)).is_ok());
    assert!(err_of(&values(0.0)).contains("not a finite non-zero"));
    assert!(err_of(&values(f32::NAN)).contains("not a finite non-zero"));
    // Trailing bytes after the last tensor.
    let mut t = vec![0];
    t.extend_from_slice(&1f32.to_le_bytes());
    t.extend_from_slice(&2u64.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    let mut good = layer(&t);
    assert!(decode(&good).is_ok());
    let n = good.len();
    good.insert(n - 32, 0);
    reseal(&mut good);
    assert!(err_of(&good).contains("unexpected bytes after the last tensor"));
}

#[test]
fn encode_validates() {
    let base = small_model();
    let err = |f: &dyn Fn(&mut SsmModel)| {
        let mut m = base.clone();
        f(&mut m);
        format!("{:#}", encode(&m).expect_err("encode should fail"))
    };
    let set_pattern = |m: &mut SsmModel, i: usize, v: i8| {
        if let LayerWeights::Ternary { pattern, .. } = &mut m.layers[0].weights {
            pattern[i] = v;
        }
    };
    assert!(err(&|m| set_pattern(m, 5, 2)).contains("not -1, 0 or 1"));
    assert!(err(&|m| m.layers[0].shape = vec![3, 21]).contains("needs 63"));
    assert!(err(&|m| m.layers[0].shape = vec![1 << 20, 1 << 20]).contains("2^31"));
    assert!(err(&|m| m.layers[0].shape = vec![1; 9]).contains("dimensions"));
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = err(&|m| {
            if let LayerWeights::Ternary { magnitude, .. } = &mut m.layers[0].weights {
                *magnitude = bad;
            }
        });
        assert!(e.contains("magnitude"), "{e}");
    }
    assert!(err(&|m| {
        if let LayerWeights::Values(v) = &mut m.layers[2].weights {
            v[0] = f32::NAN;
        }
    })
    .contains("not finite"));
    assert!(err(&|m| m.tensors[0].2.push(1.0)).contains("needs 3"));
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

#[test]
fn file_round_trip_and_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.ssm");
    let m = small_model();
    write_file(&m, &path).unwrap();
    assert_eq!(read_file(&path).unwrap(), m);
    // Overwriting is atomic and leaves no temporary file behind.
    write_file(&m, &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("model.ssm")]);

    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = format!("{:#}", read_file(&path).unwrap_err());
    assert!(
        e.contains("model.ssm") && e.contains("checksum mismatch"),
        "{e}"
    );
    let missing = dir.path().join("missing.ssm");
    let e = format!("{:#}", read_file(&missing).unwrap_err());
    assert!(e.contains("missing.ssm"), "{e}");
    // Missing directories are created (core::fsio::write_atomic, as for every file we write).
    write_file(&m, &dir.path().join("new/dir/m.ssm")).unwrap();
    assert_eq!(read_file(&dir.path().join("new/dir/m.ssm")).unwrap(), m);
    // A path whose parent is a file fails and names the path.
    let e = format!(
        "{:#}",
        write_file(&m, &dir.path().join("model.ssm/dir.ssm")).unwrap_err()
    );
    assert!(e.contains("dir.ssm"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Fuzz
// ---------------------------------------------------------------------------------------

/// One mutation of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte (position modulo the length).
    Flip(usize, u8),
    /// Overwrite 4 bytes with a little-endian u32 (extreme values are likely).
    Word(usize, u32),
    /// Overwrite 8 bytes with a little-endian u64.
    Long(usize, u64),
    /// Insert a byte.
    Insert(usize, u8),
    /// Delete a byte.
    Delete(usize),
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(1 << 31),
        any::<u32>(),
        0u32..300
    ];
    let long = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1 << 40),
        any::<u64>(),
        0u64..300
    ];
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), word).prop_map(|(i, w)| Mutation::Word(i, w)),
        (any::<usize>(), long).prop_map(|(i, w)| Mutation::Long(i, w)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match *m {
        Mutation::Flip(i, x) => bytes[i % n] ^= x,
        Mutation::Word(i, w) => {
            for (k, b) in w.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i % n + k) {
                    *slot = b;
                }
            }
        }
        Mutation::Long(i, w) => {
            for (k, b) in w.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i % n + k) {
                    *slot = b;
                }
            }
        }
        Mutation::Insert(i, x) => bytes.insert(i % (n + 1), x),
        Mutation::Delete(i) => {
            bytes.remove(i % n);
        }
    }
}

/// The decoder's fuzz target: [`check_decoder`] on (a) arbitrary bytes, raw or behind a
/// valid header and checksum; (b) valid encodings with random mutations, truncations and
/// appended bytes (mostly caught by the header and checksum); (c) valid encodings with
/// mutations of the body and a recomputed length and checksum, so that the structural
/// checks, not the checksum, have to catch them.
mod fuzz {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), sealed in any::<bool>()) {
            let bytes = if sealed { seal(&bytes) } else { bytes };
            check_decoder(&bytes)?;
        }

        #[test]
        fn mutated_encodings(
            m in model_strategy(6),
            mutations in prop::collection::vec(mutation_strategy(), 0..4),
            truncate in prop::option::of(any::<usize>()),
            append in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut bytes = encode(&m).unwrap();
            for mu in &mutations {
                apply(&mut bytes, mu);
            }
            if let Some(t) = truncate {
                bytes.truncate(t % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&append);
            check_decoder(&bytes)?;
        }

        #[test]
        fn mutated_and_resealed(
            m in model_strategy(6),
            mutations in prop::collection::vec(mutation_strategy(), 1..4),
        ) {
            let mut bytes = encode(&m).unwrap();
            // Mutate only the body (the header's magic and version stay valid).
            let mut body = bytes[16..bytes.len() - 32].to_vec();
            for mu in &mutations {
                apply(&mut body, mu);
            }
            bytes = seal(&body);
            check_decoder(&bytes)?;
        }
    }
}

/// The resealed mutations of the fuzz target reach the structural checks: over 3000
/// deterministic cases, no error is a checksum error, and the errors span many distinct
/// checks (messages with numbers and names removed), the key bounds among them.
#[test]
fn resealed_mutations_reach_the_structural_checks() {
    let mut rng = Rng(42);
    let mut kinds = std::collections::BTreeSet::new();
    let mut ok = 0;
    for case in 0..3000u64 {
        let layers = (0..3)
            .map(|i| {
                let shape = vec![
                    1 + (rng.next() % 9) as usize,
                    1 + (rng.next() % 30) as usize,
                ];
                let density = [0.0, 0.05, 0.3, 0.9][(rng.next() % 4) as usize];
                random_layer(
                    format!("l{i}"),
                    shape,
                    case * 7 + i,
                    density,
                    rng.next() & 1 == 0,
                )
            })
            .collect();
        let m = SsmModel {
            model: json!({"type": "x"}),
            layers,
            tensors: vec![("t".into(), vec![2], vec![1.0, 2.0])],
        };
        let bytes = encode(&m).unwrap();
        let mut body = bytes[16..bytes.len() - 32].to_vec();
        let word = [u32::MAX, 0, 1000, rng.next() as u32][(rng.next() % 4) as usize];
        let mutation = match rng.next() % 4 {
            0 => Mutation::Flip(rng.next() as usize, 1 + (rng.next() % 255) as u8),
            1 => Mutation::Word(rng.next() as usize, word),
            2 => Mutation::Delete(rng.next() as usize),
            _ => Mutation::Insert(rng.next() as usize, rng.next() as u8),
        };
        apply(&mut body, &mutation);
        match decode(&seal(&body)) {
            Ok(_) => ok += 1,
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(!msg.contains("checksum mismatch"), "{msg}");
                // Drop digits and `quoted` names; keep the first words.
                let kind: String = msg
                    .split('`')
                    .step_by(2)
                    .collect::<String>()
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(100)
                    .collect();
                kinds.insert(kind);
            }
        }
    }
    assert!(ok < 3000);
    assert!(
        kinds.len() >= 25,
        "only {} kinds of error: {kinds:#?}",
        kinds.len()
    );
    for needle in [
        "decode budget",
        "exceeds the layer's",
        "past the end",
        "unknown encoding tag",
        "more than ^",
    ] {
        assert!(
            kinds.iter().any(|k| k.contains(needle)),
            "no `{needle}` error in {kinds:#?}"
        );
    }
}
