//! The inference engine's kernel for signed-constant linear layers: the kept inputs of every
//! output row in fixed groups of [`GROUP`] of one sign, run as one flat loop over all groups.
//!
//! A row-by-row sparse product loops over every row's positive and then its negative kept
//! inputs, and the exits of those loops (how many groups of four, then a remainder) depend on
//! the row: with ~10 kept inputs per row and sign they mispredict all the time (the first
//! layer of a trained FCN has 600 such segments, measured at about half of its time). Here
//! each (row, sign) segment is padded to a multiple of [`GROUP`] with the index of a zero input
//! (the slot after the last input, which callers keep at 0), and one loop runs over every group
//! of the layer, row after row, with no data-dependent branch: a group adds its inputs
//! pairwise, flips the sum's sign bit for a negative group, adds it to a running sum held in
//! registers, stores `sum * magnitude` to its row's output (the row's last group stores the
//! final value) and clears the running sum when it ends its row. This is
//! [`supermask_core::fused`]'s sparse product with the additions in another order.
//!
//! For one sample the running sum is a chain (each group waits for the previous group's add),
//! which bounds a scalar loop, so [`Grouped::matvec`] runs groups round-robin over the rows
//! instead (every row's first group, then every second group, ...) and adds each into its
//! row's sum in memory: consecutive groups touch different sums and never wait on each other.
//! Its groups take the sign from the index into `[x, 0, -x]` and use 16-bit indices where they
//! fit (see `RoundRobin`). Measured on the generated Table 1 FCN (Xeon, one thread): batch 1
//! in 9 us row by row, 8.6 us with the running sum, 4.2-4.3 us round-robin with one sign per
//! group and `u32` indices, and 3.1-3.2 us with signed `u16` indices (interleaved runs).

use supermask_core::fused::{Ternary, Values};

/// Kept inputs per group (4: padding adds ~1.5 entries per segment; 8 would add ~3.5).
pub const GROUP: usize = 4;

/// The row bits of a group's `meta`.
const ROW: u32 = (1 << 30) - 1;
/// Set in `meta` for a group of negative entries (the bit flips the sign of the group's sum).
const SIGN: u32 = 1 << 31;
/// Set in `meta` for the last group of a row (the running sum restarts after it).
const END: u32 = 1 << 30;

/// A signed-constant layer `[rows, cols]` in groups.
#[derive(Clone, Debug)]
pub struct Grouped {
    rows: usize,
    cols: usize,
    /// Input indices of every group (`cols` is the zero slot that pads a segment).
    idx: Vec<[u32; GROUP]>,
    /// Per group: its output row, [`SIGN`] and [`END`].
    meta: Vec<u32>,
    /// The kept entries again, round-robin over the rows, for [`Grouped::matvec`].
    rr: RoundRobin,
    magnitude: f32,
}

/// A layer's kept entries for one sample: per row, its kept inputs in groups of [`GROUP`] of
/// either sign, as indices into the signed input `[x, 0, -x]` (a negative entry `c` is index
/// `cols + 1 + c`; `cols`, the zero, pads a row's last group), and the groups ordered
/// round-robin over the rows (every row's first group, then every second group, ...), each
/// with its row.
///
/// With the sign in the index, a row is one segment (half the padding of one per sign) and a
/// group is four loads and three adds. When the signed input and the rows fit 16-bit indices
/// (`2 cols + 2` and `rows` at most 2^16) they are stored as `u16` and read from
/// [`MatvecScratch`]'s arrays of 2^16 values, which no `u16` can overrun: the loop has no
/// bounds checks (with `u32` indices five per group, whose compare-and-branch pairs took the
/// branch ports that bound this loop).
#[derive(Clone, Debug)]
enum RoundRobin {
    Narrow {
        idx: Vec<[u16; GROUP]>,
        row: Vec<u16>,
    },
    Wide {
        idx: Vec<[u32; GROUP]>,
        row: Vec<u32>,
    },
}

/// The size of [`MatvecScratch`]'s arrays: one past the largest 16-bit index.
const NARROW: usize = 1 << 16;

/// Scratch for [`Grouped::matvec`], reusable across layers and calls: the signed input and
/// the row sums, 2^16 values each (512 KiB in all; a layer touches only its own part).
#[derive(Clone, Debug)]
pub struct MatvecScratch {
    signed: Box<[f32; NARROW]>,
    acc: Box<[f32; NARROW]>,
    /// For layers too wide for 16-bit indices.
    wide_signed: Vec<f32>,
    wide_acc: Vec<f32>,
}

impl Default for MatvecScratch {
    fn default() -> Self {
        let zeros = || -> Box<[f32; NARROW]> {
            vec![0.0; NARROW]
                .into_boxed_slice()
                .try_into()
                .expect("NARROW values")
        };
        Self {
            signed: zeros(),
            acc: zeros(),
            wide_signed: Vec::new(),
            wide_acc: Vec::new(),
        }
    }
}

/// `[x, 0, -x]` into `dst` (which has room for it).
fn fill_signed(x: &[f32], dst: &mut [f32]) {
    let n = x.len();
    dst[..n].copy_from_slice(x);
    dst[n] = 0.0;
    for (d, v) in dst[n + 1..=2 * n].iter_mut().zip(x) {
        *d = -v;
    }
}

/// The sum of a group's values, pairwise: `(v0 + v1) + (v2 + v3)`.
#[inline(always)]
fn tree_sum(v: [f32; GROUP]) -> f32 {
    const { assert!(GROUP == 4, "tree_sum adds groups of four") };
    (v[0] + v[1]) + (v[2] + v[3])
}

/// `entries` in groups of [`GROUP`], the last one padded with `pad` (the zero slot).
fn groups_of(entries: &[u32], pad: u32) -> impl Iterator<Item = [u32; GROUP]> + '_ {
    entries.chunks(GROUP).map(move |chunk| {
        let mut g = [pad; GROUP];
        g[..chunk.len()].copy_from_slice(chunk);
        g
    })
}

/// `v` with its sign bit flipped when `meta` has [`SIGN`].
#[inline(always)]
fn signed(v: f32, meta: u32) -> f32 {
    f32::from_bits(v.to_bits() ^ (meta & SIGN))
}

/// All ones unless `meta` ends a row (then zero): the mask that keeps or clears the sum.
#[inline(always)]
fn keep(meta: u32) -> u32 {
    ((meta >> 30) & 1).wrapping_sub(1)
}

impl Grouped {
    /// The grouped form of `t`, or `None` when its values are not signed constants (or it has
    /// 2^30 rows or more).
    pub fn new(t: &Ternary) -> Option<Self> {
        let Values::Signs { split, magnitude } = &t.values else {
            return None;
        };
        if t.rows > ROW as usize || 2 * t.cols >= u32::MAX as usize {
            return None;
        }
        let pad = t.cols as u32;
        let (mut idx, mut meta) = (Vec::new(), Vec::<u32>::new());
        for (r, &mid) in split.iter().enumerate().take(t.rows) {
            let segments = [
                (&t.idx[t.ptr[r]..mid], 0),
                (&t.idx[mid..t.ptr[r + 1]], SIGN),
            ];
            let before = idx.len();
            for (seg, sign) in segments {
                for g in groups_of(seg, pad) {
                    idx.push(g);
                    meta.push(r as u32 | sign);
                }
            }
            if idx.len() == before {
                // A row with nothing kept still needs its output written (0).
                idx.push([pad; GROUP]);
                meta.push(r as u32);
            }
            *meta.last_mut().expect("a group per row") |= END;
        }
        // Per row: its positive then its negative kept inputs as signed indices, in groups.
        let mut row_groups: Vec<Vec<[u32; GROUP]>> = Vec::with_capacity(t.rows);
        for (r, &mid) in split.iter().enumerate().take(t.rows) {
            let signed_idx = t.idx[t.ptr[r]..mid]
                .iter()
                .copied()
                .chain(t.idx[mid..t.ptr[r + 1]].iter().map(|&c| pad + 1 + c));
            let all: Vec<u32> = signed_idx.collect();
            let mut groups: Vec<[u32; GROUP]> = groups_of(&all, pad).collect();
            if groups.is_empty() {
                // A row with nothing kept still needs its output written (0).
                groups.push([pad; GROUP]);
            }
            row_groups.push(groups);
        }
        let longest = row_groups.iter().map(Vec::len).max().unwrap_or(0);
        let (mut rr_idx, mut rr_row) = (Vec::new(), Vec::new());
        for j in 0..longest {
            for (r, groups) in row_groups.iter().enumerate() {
                if let Some(g) = groups.get(j) {
                    rr_idx.push(*g);
                    rr_row.push(r as u32);
                }
            }
        }
        let rr = if 2 * t.cols + 2 <= NARROW && t.rows <= NARROW {
            RoundRobin::Narrow {
                idx: rr_idx.iter().map(|g| g.map(|i| i as u16)).collect(),
                row: rr_row.iter().map(|&r| r as u16).collect(),
            }
        } else {
            RoundRobin::Wide {
                idx: rr_idx,
                row: rr_row,
            }
        };
        Some(Self {
            rows: t.rows,
            cols: t.cols,
            idx,
            meta,
            rr,
            magnitude: *magnitude,
        })
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `out[r] = sum_kept(±x) * magnitude` for one sample `x` of `cols` values.
    pub fn matvec(&self, x: &[f32], scratch: &mut MatvecScratch, out: &mut [f32]) {
        assert!(
            x.len() == self.cols && out.len() >= self.rows,
            "grouped matvec: {} inputs and {} outputs",
            self.cols,
            self.rows
        );
        let out = &mut out[..self.rows];
        match &self.rr {
            RoundRobin::Narrow { idx, row } => {
                let (xs, acc) = (&mut *scratch.signed, &mut *scratch.acc);
                fill_signed(x, xs);
                acc[..self.rows].fill(0.0);
                for (g, &r) in idx.iter().zip(row) {
                    acc[usize::from(r)] += tree_sum(g.map(|i| xs[usize::from(i)]));
                }
                self.scale(&acc[..self.rows], out);
            }
            RoundRobin::Wide { idx, row } => {
                let (xs, acc) = (&mut scratch.wide_signed, &mut scratch.wide_acc);
                xs.resize(2 * self.cols + 1, 0.0);
                fill_signed(x, xs);
                acc.clear();
                acc.resize(self.rows, 0.0);
                for (g, &r) in idx.iter().zip(row) {
                    acc[r as usize] += tree_sum(g.map(|i| xs[i as usize]));
                }
                self.scale(acc, out);
            }
        }
    }

    /// `out = sums * magnitude`.
    fn scale(&self, sums: &[f32], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(sums) {
            *o = a * self.magnitude;
        }
    }

    /// The same for a block of `N` samples stored feature-major (`x[i]` holds input `i` of
    /// every sample): `x` has `cols + 1` rows, the last all zeros. Every kept input is one
    /// fixed-width vector load and add.
    pub fn matmul_block<const N: usize>(&self, x: &[[f32; N]], out: &mut [[f32; N]]) {
        assert!(
            x.len() > self.cols && x[self.cols].iter().all(|&v| v == 0.0),
            "grouped block: input needs its zero row"
        );
        assert!(out.len() >= self.rows, "grouped block: output rows");
        let x = &x[..=self.cols];
        pulp::Arch::new().dispatch(BlockOp {
            g: self,
            x,
            out: &mut out[..self.rows],
        })
    }
}

/// [`Grouped::matmul_block`]'s loop as a `pulp` operation: a struct, not a closure, so that it
/// is inlined into the function compiled for the CPU's vector width (as a closure its
/// `call_once` stayed a separate function without those target features: scalar code, 3x
/// slower).
struct BlockOp<'a, const N: usize> {
    g: &'a Grouped,
    x: &'a [[f32; N]],
    out: &'a mut [[f32; N]],
}

impl<const N: usize> pulp::NullaryFnOnce for BlockOp<'_, N> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Self { g, x, out } = self;
        // Whole-array values, so the compiler keeps each in vector registers.
        let mut acc = [0.0f32; N];
        for (i, &m) in g.idx.iter().zip(&g.meta) {
            let v = i.map(|i| &x[i as usize]);
            let mut o = [0.0f32; N];
            for k in 0..N {
                acc[k] += signed(tree_sum(v.map(|v| v[k])), m);
                o[k] = acc[k] * g.magnitude;
                acc[k] = f32::from_bits(acc[k].to_bits() & keep(m));
            }
            out[(m & ROW) as usize] = o;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use supermask_core::fused::{EffLayout, Effective};

    /// A `rows x cols` ternary pattern with rows of many lengths and both signs.
    fn layer(rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>, Ternary) {
        let mut w = vec![0.0f32; rows * cols];
        let mut mask = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                w[i] = if (r * 7 + c * 3) % 5 < 2 { -0.5 } else { 0.5 };
                mask[i] = f32::from(u8::from((c + r) % (r + 1) == 0 || c < r % (cols + 1)));
            }
        }
        let Effective::Sparse(t) =
            Effective::build(&w, &mask, rows, cols, Some(0.5), EffLayout::Sparse)
        else {
            unreachable!()
        };
        (w, mask, t)
    }

    /// `(W * mask) x` for `W` and `mask` of `x.len()` columns, in f32 left to right.
    fn dense_product(w: &[f32], mask: &[f32], x: &[f32]) -> Vec<f32> {
        w.chunks(x.len())
            .zip(mask.chunks(x.len()))
            .map(|(w, m)| w.iter().zip(m).zip(x).map(|((w, m), x)| w * m * x).sum())
            .collect()
    }

    /// Integer inputs, so every order of the additions gives the same sums: the grouped kernel
    /// equals the dense product `(W * mask) x` exactly, for one sample and for blocks.
    #[test]
    fn grouped_products_equal_the_dense_product() {
        let (rows, cols) = (23, 19);
        let (w, mask, t) = layer(rows, cols);
        let g = Grouped::new(&t).expect("signed constants");
        assert!(matches!(g.rr, RoundRobin::Narrow { .. }));
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 3.0) % 11.0 - 5.0).collect();
        let want = dense_product(&w, &mask, &x);
        let mut scratch = MatvecScratch::default();
        let mut out = vec![0.0; rows];
        g.matvec(&x, &mut scratch, &mut out);
        assert_eq!(out, want);
        // Again with scratch left dirty by the first call.
        g.matvec(&x, &mut scratch, &mut out);
        assert_eq!(out, want);
        // A block of 16 samples: sample s is x scaled by (s - 7).
        let mut xb = vec![[0.0f32; 16]; cols + 1];
        for (c, row) in xb.iter_mut().take(cols).enumerate() {
            for (s, v) in row.iter_mut().enumerate() {
                *v = x[c] * (s as f32 - 7.0);
            }
        }
        let mut outb = vec![[0.0f32; 16]; rows];
        g.matmul_block(&xb, &mut outb);
        for (r, (row, w)) in outb.iter().zip(&want).enumerate() {
            for (s, v) in row.iter().enumerate() {
                assert_eq!(*v, w * (s as f32 - 7.0), "row {r} sample {s}");
            }
        }
    }

    /// A layer too wide for 16-bit signed indices (2 * 33,000 + 2 > 2^16) takes the `u32`
    /// round-robin loop, and it computes the same dense product as the narrow one does above.
    #[test]
    fn wide_layers_match_the_dense_product() {
        let (rows, cols) = (3, 33_000);
        let mut w = vec![0.5f32; rows * cols];
        let mut mask = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in (r..cols).step_by(997 + r) {
                mask[r * cols + c] = 1.0;
                if c % 3 == 0 {
                    w[r * cols + c] = -0.5;
                }
            }
        }
        let Effective::Sparse(t) =
            Effective::build(&w, &mask, rows, cols, Some(0.5), EffLayout::Sparse)
        else {
            unreachable!()
        };
        let g = Grouped::new(&t).expect("signed constants");
        assert!(matches!(g.rr, RoundRobin::Wide { .. }));
        let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 - 6.0).collect();
        let want = dense_product(&w, &mask, &x);
        let mut out = vec![0.0; rows];
        g.matvec(&x, &mut MatvecScratch::default(), &mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn real_valued_layers_are_not_grouped() {
        let w = [0.3f32, -0.2, 0.0, 0.7];
        let Effective::Sparse(t) = Effective::build(&w, &[1.0; 4], 2, 2, None, EffLayout::Sparse)
        else {
            unreachable!()
        };
        assert!(Grouped::new(&t).is_none());
    }
}
