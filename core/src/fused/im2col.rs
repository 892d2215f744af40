//! Convolution geometry of one sample and its im2col / col2im transforms (the fused layer's
//! lowering of a convolution to a GEMM).

use super::vectorized;
use std::ops::Range;

/// Convolution geometry of one sample.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvDims {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl ConvDims {
    pub(super) fn new(
        x_dims: &[usize],
        c_in: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Self> {
        let [_, c, h, w] = *x_dims else { return None };
        if c != c_in || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        Some(Self {
            c,
            h,
            w,
            k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
        })
    }
    pub(super) fn input(&self) -> usize {
        self.c * self.h * self.w
    }
    pub(super) fn positions(&self) -> usize {
        self.oh * self.ow
    }
    pub(super) fn patch(&self) -> usize {
        self.c * self.k * self.k
    }
    /// A 1x1, stride-1, unpadded convolution: the input already is its column matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    #[inline(always)]
    /// For kernel offset `kk` along one axis: the output range whose input index
    /// `o * stride + kk - pad` lies inside `0..size`.
    fn valid(&self, kk: usize, size: usize, outs: usize) -> Range<usize> {
        let lo = self.pad.saturating_sub(kk).div_ceil(self.stride);
        let hi = if size + self.pad > kk {
            ((size + self.pad - kk - 1) / self.stride + 1).min(outs)
        } else {
            0
        };
        lo.min(hi)..hi
    }

    /// `cols[(c, ki, kj), (oh, ow)] = x[c, oh*s + ki - p, ow*s + kj - p]` (0 outside).
    pub(super) fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        vectorized(
            #[inline(always)]
            || self.im2col_impl(x, cols),
        )
    }

    #[inline(always)]
    fn im2col_impl(&self, x: &[f32], cols: &mut [f32]) {
        let p = self.positions();
        // Stride 1 with the output as wide as the input ("same" padding): an output row's
        // source row is the next row's too, so a whole kernel offset is one shifted copy of
        // the plane plus zeroed column margins (one call instead of one per output row, which
        // matters for the 8- to 16-wide maps of ResNet stages 2 and 3).
        let same = self.stride == 1 && self.ow == self.w;
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ki in 0..self.k {
                let rows = self.valid(ki, self.h, self.oh);
                for kj in 0..self.k {
                    let cols_ok = self.valid(kj, self.w, self.ow);
                    let r = (c * self.k + ki) * self.k + kj;
                    let out = &mut cols[r * p..(r + 1) * p];
                    // Zero only what padding covers: output rows outside `rows`, and the
                    // column margins of the rows inside.
                    out[..rows.start * self.ow].fill(0.0);
                    out[rows.end * self.ow..].fill(0.0);
                    if same && !rows.is_empty() && !cols_ok.is_empty() {
                        self.shifted_copy(plane, ki, kj, rows.clone(), cols_ok.clone(), out);
                        continue;
                    }
                    for oh in rows.clone() {
                        let ih = oh * self.stride + ki - self.pad;
                        let src = &plane[ih * self.w..(ih + 1) * self.w];
                        let dst = &mut out[oh * self.ow..(oh + 1) * self.ow];
                        dst[..cols_ok.start].fill(0.0);
                        dst[cols_ok.end..].fill(0.0);
                        if self.stride == 1 {
                            let iw0 = cols_ok.start + kj - self.pad;
                            let n = cols_ok.len();
                            dst[cols_ok.clone()].copy_from_slice(&src[iw0..iw0 + n]);
                        } else {
                            for ow in cols_ok.clone() {
                                dst[ow] = src[ow * self.stride + kj - self.pad];
                            }
                        }
                    }
                }
            }
        }
    }

    /// One kernel offset `(ki, kj)` of a stride-1 "same" convolution: output `(oh, ow)` reads
    /// `plane[(oh + ki - pad) * w + ow + kj - pad]`, a constant shift of the flat index. So
    /// the entries `a..b` of the offset's column row (from the first valid entry of the first
    /// valid row to the last of the last, both inside the plane) pair with the plane's entries
    /// from the returned start on; in between, the columns outside `cols_ok` pair with the
    /// neighbouring row's edge ([`zero_margins`] handles them).
    #[inline(always)]
    fn shifted_block(
        &self,
        ki: usize,
        kj: usize,
        rows: &Range<usize>,
        cols_ok: &Range<usize>,
    ) -> (Range<usize>, usize) {
        let w = self.w;
        let a = rows.start * w + cols_ok.start;
        let b = (rows.end - 1) * w + cols_ok.end;
        (
            a..b,
            (rows.start + ki - self.pad) * w + cols_ok.start + kj - self.pad,
        )
    }

    /// im2col of one kernel offset of a stride-1 "same" convolution ([`Self::shifted_block`]):
    /// one copy, then the column margins zeroed.
    #[inline(always)]
    fn shifted_copy(
        &self,
        plane: &[f32],
        ki: usize,
        kj: usize,
        rows: Range<usize>,
        cols_ok: Range<usize>,
        out: &mut [f32],
    ) {
        let (block, src) = self.shifted_block(ki, kj, &rows, &cols_ok);
        out[block.clone()].copy_from_slice(&plane[src..src + block.len()]);
        zero_margins(
            &mut out[rows.start * self.w..rows.end * self.w],
            self.w,
            &cols_ok,
        );
    }

    /// The adjoint of [`ConvDims::shifted_copy`]: one kernel offset's rows of `g` added to
    /// `plane` as one shifted, contiguous sum. The margin entries would land on the
    /// neighbouring row's edge, so they are set to `+0.0` first; adding `+0.0` changes no sum
    /// (a sum started at `+0.0` is never `-0.0` in round-to-nearest), so the result is
    /// bit-identical to adding row by row.
    #[inline(always)]
    fn shifted_add(
        &self,
        g: &mut [f32],
        ki: usize,
        kj: usize,
        rows: Range<usize>,
        cols_ok: Range<usize>,
        plane: &mut [f32],
    ) {
        zero_margins(
            &mut g[rows.start * self.w..rows.end * self.w],
            self.w,
            &cols_ok,
        );
        let (block, dst) = self.shifted_block(ki, kj, &rows, &cols_ok);
        for (d, g) in plane[dst..dst + block.len()].iter_mut().zip(&g[block]) {
            *d += g;
        }
    }

    /// The adjoint of [`ConvDims::im2col`]: adds the sum over patches of `gcols` into `gx`,
    /// which must hold `+0.0` on entry (a freshly zeroed buffer; zeroing it here again cost a
    /// second pass over every input gradient). The entries of `gcols` that padding covers are
    /// ignored; they may be overwritten with zeros (scratch).
    pub(super) fn col2im(&self, gcols: &mut [f32], gx: &mut [f32]) {
        vectorized(
            #[inline(always)]
            || self.col2im_impl(gcols, gx),
        )
    }

    #[inline(always)]
    fn col2im_impl(&self, gcols: &mut [f32], gx: &mut [f32]) {
        let p = self.positions();
        let same = self.stride == 1 && self.ow == self.w;
        debug_assert!(
            gx.iter().all(|v| v.to_bits() == 0),
            "col2im needs a +0.0 gx"
        );
        for c in 0..self.c {
            let plane = &mut gx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ki in 0..self.k {
                let rows = self.valid(ki, self.h, self.oh);
                for kj in 0..self.k {
                    let cols_ok = self.valid(kj, self.w, self.ow);
                    let r = (c * self.k + ki) * self.k + kj;
                    let src = &mut gcols[r * p..(r + 1) * p];
                    if same && !rows.is_empty() && !cols_ok.is_empty() {
                        self.shifted_add(src, ki, kj, rows.clone(), cols_ok.clone(), plane);
                        continue;
                    }
                    for oh in rows.clone() {
                        let ih = oh * self.stride + ki - self.pad;
                        let dst = &mut plane[ih * self.w..(ih + 1) * self.w];
                        let g = &src[oh * self.ow..(oh + 1) * self.ow];
                        if self.stride == 1 {
                            let iw0 = cols_ok.start + kj - self.pad;
                            let dst = &mut dst[iw0..iw0 + cols_ok.len()];
                            for (d, g) in dst.iter_mut().zip(&g[cols_ok.clone()]) {
                                *d += g;
                            }
                        } else {
                            for ow in cols_ok.clone() {
                                dst[ow * self.stride + kj - self.pad] += g[ow];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Zeroes the entries outside `cols_ok` of every `w`-wide row of `rows`.
#[inline(always)]
fn zero_margins(rows: &mut [f32], w: usize, cols_ok: &Range<usize>) {
    for row in rows.chunks_exact_mut(w) {
        for v in &mut row[..cols_ok.start] {
            *v = 0.0;
        }
        for v in &mut row[cols_ok.end..] {
            *v = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConvDims;

    /// Calls `f(cols index, input index)` for every entry of the column matrix in the order
    /// of its rows, with `None` where padding covers the entry: the definition of
    /// [`ConvDims::im2col`]'s doc, one entry at a time.
    fn for_each_entry(d: &ConvDims, mut f: impl FnMut(usize, Option<usize>)) {
        let p = d.positions();
        for c in 0..d.c {
            for ki in 0..d.k {
                for kj in 0..d.k {
                    let r = (c * d.k + ki) * d.k + kj;
                    for oh in 0..d.oh {
                        for ow in 0..d.ow {
                            let ih = (oh * d.stride + ki) as isize - d.pad as isize;
                            let iw = (ow * d.stride + kj) as isize - d.pad as isize;
                            let inside =
                                (0..d.h as isize).contains(&ih) && (0..d.w as isize).contains(&iw);
                            let src = inside.then(|| (c * d.h + ih as usize) * d.w + iw as usize);
                            f(r * p + oh * d.ow + ow, src);
                        }
                    }
                }
            }
        }
    }

    /// `cols` by the definition.
    fn naive(d: &ConvDims, x: &[f32]) -> Vec<f32> {
        let mut cols = vec![0.0f32; d.patch() * d.positions()];
        for_each_entry(d, |i, src| cols[i] = src.map_or(0.0, |j| x[j]));
        cols
    }

    /// `gx` by the definition of [`ConvDims::col2im`]: every valid entry of `gcols` added to
    /// its input position, in the order of the rows of `gcols`.
    fn naive_col2im(d: &ConvDims, gcols: &[f32]) -> Vec<f32> {
        let mut gx = vec![0.0f32; d.input()];
        for_each_entry(d, |i, src| {
            if let Some(j) = src {
                gx[j] += gcols[i];
            }
        });
        gx
    }

    fn assert_bitwise(got: &[f32], want: &[f32], case: (usize, usize, usize, usize, usize, usize)) {
        assert_eq!(got.len(), want.len(), "{case:?}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits(),
                "{case:?}: entry {i}: {a} vs {b}"
            );
        }
    }

    /// `(c, h, w, k, stride, pad)`: the same-padded 3x3 convolutions of the models (square,
    /// non-square, 1x1 maps), 5x5 "same", unpadded, strided, pointwise, 2x2 and over-padded.
    const CASES: [(usize, usize, usize, usize, usize, usize); 11] = [
        (3, 8, 8, 3, 1, 1),
        (2, 5, 7, 3, 1, 1),
        (2, 1, 1, 3, 1, 1),
        (1, 2, 3, 3, 1, 1),
        (2, 9, 6, 5, 1, 2),
        (2, 8, 8, 3, 1, 0),
        (2, 8, 8, 3, 2, 1),
        (2, 7, 9, 3, 2, 1),
        (3, 6, 6, 1, 2, 0),
        (1, 4, 4, 2, 1, 1),
        (2, 3, 3, 3, 1, 2),
    ];

    /// The fast paths (the shifted copy of stride-1 "same" convolutions, the row copies of the
    /// others) give the definition's matrix exactly, over the geometries the models use and
    /// odd ones; the output buffer starts as NaN so an entry left unwritten shows.
    #[test]
    fn im2col_equals_its_definition() {
        for (c, h, w, k, stride, pad) in CASES {
            let d = ConvDims::new(&[1, c, h, w], c, k, stride, pad).expect("geometry");
            let x: Vec<f32> = (0..d.input()).map(|i| i as f32 + 1.0).collect();
            let mut cols = vec![f32::NAN; d.patch() * d.positions()];
            d.im2col(&x, &mut cols);
            assert_bitwise(&cols, &naive(&d, &x), (c, h, w, k, stride, pad));
        }
    }

    /// col2im's fast path (the shifted sum of stride-1 "same" convolutions) gives the
    /// definition's sums bit for bit, with values whose sums round (so a changed order of
    /// additions shows) and NaN in the entries padding covers (which must be ignored).
    #[test]
    fn col2im_equals_its_definition() {
        for (c, h, w, k, stride, pad) in CASES {
            let d = ConvDims::new(&[1, c, h, w], c, k, stride, pad).expect("geometry");
            // im2col of NaNs marks which entries padding covers (they stay 0 there).
            let mut mask = vec![0.0f32; d.patch() * d.positions()];
            d.im2col(&vec![f32::NAN; d.input()], &mut mask);
            let gcols: Vec<f32> = mask
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.is_nan() {
                        // 1/3, 1/7, ... in alternating signs: sums that round.
                        let v = 1.0 / (3 + 4 * (i % 5)) as f32;
                        if i % 2 == 0 {
                            v
                        } else {
                            -v * 1.1
                        }
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            let want = naive_col2im(&d, &gcols);
            let mut scratch = gcols.clone();
            let mut gx = vec![0.0f32; d.input()];
            d.col2im(&mut scratch, &mut gx);
            assert_bitwise(&gx, &want, (c, h, w, k, stride, pad));
        }
    }
}
