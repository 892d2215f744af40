//! Fuzz properties of the decoder: mutated bytes, resealed or not, never panic.

use proptest::prelude::*;
use serde_json::json;
use supermask_export::format::{decode, encode};
use supermask_export::SsmModel;

use crate::helpers::*;

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
mod decoder {
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
    let mut rng = SplitMix(42);
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
