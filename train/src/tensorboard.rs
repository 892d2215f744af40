//! Live curves: every run writes its metrics as a TensorBoard event file
//! (`events.out.tfevents.<start>.supermask`) in its run directory, so `tensorboard --logdir
//! runs/` (or a sweep directory) shows runs side by side, as hidden-networks, biprop and
//! Gem-Miner do.
//!
//! The file is the TFRecord framing of `tensorflow.Event` protocol buffers, written here
//! without a protobuf or TensorFlow dependency: each record is an 8-byte little-endian length,
//! its masked CRC-32C, the bytes, and their masked CRC-32C. The first event carries
//! `file_version = "brain.Event:2"`; each epoch is one event at `step = epoch` whose summary
//! holds the scalars (losses, accuracies, remaining weights overall and per layer, the layer's
//! -1/0/+1 shares, the learning rate).
//!
//! Like `metrics.jsonl`, the file is rewritten atomically from the run's history after every
//! epoch, so a resumed run's file holds each epoch once and matches its checkpoint. Wall times
//! are the run's start (the number in the file name, kept across resumes) plus the epochs'
//! cumulative training and evaluation seconds.

use crate::{
    callbacks::{Callback, EpochEnd},
    metrics::EpochMetrics,
    trainer::Trainer,
};
use std::path::{Path, PathBuf};
use supermask_core::{fsio::write_atomic, Result};

const PREFIX: &str = "events.out.tfevents.";
const SUFFIX: &str = ".supermask";

/// The callback writing a run directory's event file.
pub struct TensorBoard {
    path: PathBuf,
    start: u64,
}

impl TensorBoard {
    /// The event file of run directory `dir`: the one a previous start of the run wrote, else a
    /// new one named by the current time.
    pub fn new(dir: &Path) -> Result<Self> {
        let existing = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let start = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
                start.parse::<u64>().ok()
            })
        });
        let start = existing.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        Ok(Self {
            path: dir.join(format!("{PREFIX}{start}{SUFFIX}")),
            start,
        })
    }
}

impl Callback for TensorBoard {
    fn name(&self) -> &str {
        "tensorboard"
    }

    fn on_epoch_end(&mut self, _trainer: &Trainer, e: &EpochEnd<'_>) -> Result<()> {
        write_atomic(&self.path, &encode_events(e.history, self.start as f64))
    }
}

/// The event file's bytes for `history`, with wall times counted from `start` (Unix seconds).
pub fn encode_events(history: &[EpochMetrics], start: f64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut header = Vec::new();
    put_double(&mut header, 1, start);
    put_bytes(&mut header, 3, b"brain.Event:2");
    put_record(&mut out, &header);
    let mut wall = start;
    for m in history {
        wall += m.seconds + m.eval_seconds;
        let mut summary = Vec::new();
        for (tag, value) in scalars(m) {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_key(&mut v, 2, 5);
            v.extend_from_slice(&(value as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall);
        put_key(&mut event, 2, 0);
        put_varint(&mut event, m.epoch as u64);
        put_bytes(&mut event, 5, &summary);
        put_record(&mut out, &event);
    }
    out
}

/// The scalars of one epoch, by tag.
fn scalars(m: &EpochMetrics) -> Vec<(String, f64)> {
    let mut v = vec![
        ("loss/train".to_string(), m.train_loss),
        ("loss/test".to_string(), m.test_loss),
        ("accuracy/train".to_string(), m.train_acc),
        ("accuracy/test".to_string(), m.test_acc),
        ("remaining/all".to_string(), m.remaining),
        ("lr".to_string(), m.lr),
    ];
    if let (Some(loss), Some(acc)) = (m.val_loss, m.val_acc) {
        v.push(("loss/validation".to_string(), loss));
        v.push(("accuracy/validation".to_string(), acc));
    }
    for l in &m.layers {
        v.push((format!("remaining/{}", l.name), l.remaining));
        v.push((format!("shares/{}/-1", l.name), l.neg));
        v.push((format!("shares/{}/0", l.name), l.zero));
        v.push((format!("shares/{}/+1", l.name), l.pos));
    }
    v
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
fn put_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LayerMetrics;

    /// The standard check value of CRC-32C (RFC 3720, appendix B.4: "123456789").
    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    fn metrics(epoch: usize) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step: 10 * epoch as u64,
            lr: 0.1,
            train_loss: 1.0 / epoch as f64,
            train_acc: 0.5,
            test_loss: 0.9,
            test_acc: 0.25 * epoch as f64,
            val_loss: None,
            val_acc: None,
            remaining: 0.5,
            seconds: 2.0,
            eval_seconds: 0.5,
            layers: vec![LayerMetrics {
                name: "fc1".into(),
                remaining: 0.5,
                neg: 0.25,
                zero: 0.5,
                pos: 0.25,
                weights: 8,
                tau_n: None,
                tau_p: None,
            }],
        }
    }

    /// Splits the records, checking both CRCs of each.
    fn records(bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(data));
            out.push(data);
            at += 16 + len;
        }
        out
    }

    #[test]
    fn each_epoch_is_one_checksummed_record_after_the_version() {
        let bytes = encode_events(&[metrics(1), metrics(2)], 1000.0);
        let r = records(&bytes);
        assert_eq!(r.len(), 3);
        // Header: wall_time (field 1, fixed64) = 1000, file_version (field 3).
        assert_eq!(r[0][0], 0x09);
        assert_eq!(f64::from_le_bytes(r[0][1..9].try_into().unwrap()), 1000.0);
        assert!(r[0].ends_with(b"brain.Event:2"));
        // Epoch 2: wall time 1000 + 2 x 2.5 s, step 2, and the test accuracy 0.5 as a float
        // after its tag.
        assert_eq!(f64::from_le_bytes(r[2][1..9].try_into().unwrap()), 1005.0);
        assert_eq!(&r[2][9..11], &[0x10, 2]);
        let tag = b"accuracy/test";
        let i = r[2].windows(tag.len()).position(|w| w == tag).unwrap() + tag.len();
        assert_eq!(r[2][i], 0x15, "simple_value: field 2, fixed32");
        assert_eq!(
            f32::from_le_bytes(r[2][i + 1..i + 5].try_into().unwrap()),
            0.5
        );
        assert!(r[2].windows(13).any(|w| w == b"shares/fc1/+1"));
    }
}
