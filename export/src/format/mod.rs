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

mod decode;
mod encode;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::model::SsmModel;

use decode::parse;
pub use encode::encode;

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
