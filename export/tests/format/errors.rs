//! Specific errors, with and without a valid checksum, and file errors naming the path.

use std::time::{Duration, Instant};

use serde_json::json;
use supermask_export::format::{decode, encode, layer_infos, read_file, write_file, Encoding};
use supermask_export::{LayerWeights, SsmModel};

use crate::helpers::*;

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
