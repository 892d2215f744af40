//! Round trips, the choice of the smaller encoding, and size sanity.

use proptest::prelude::*;
use serde_json::json;
use supermask_export::format::{decode, encode, layer_infos, Encoding};
use supermask_export::{LayerWeights, SsmLayer, SsmModel};

use crate::helpers::*;

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
