//! Tests of the `.ssm` binary encoding (`supermask_export::format`, `docs/format.md`):
//! round trips, the choice of the smaller encoding, the exact bytes of the documented
//! example, specific errors, size sanity, and the fuzz properties of the decoder.
//!
//! Every expected size below is computed from the layout in `docs/format.md`, independently
//! of the encoder: header 16 bytes, checksum 32, a layer record `4 + name + 1 + 4 * ndim + 1
//! (+ 4 magnitude if ternary) + 8 + payload`, 2-bit payload `ceil(n / 4)`, sparse ternary
//! payload `4 + sum(varint_len(gap)) + ceil(k / 8)`, sparse values `4 + sum(varint_len(gap))
//! + 4 k`, dense values `4 n`.

mod errors;
mod fuzz;
mod helpers;
mod round_trip;
