//! Convolution geometry of one sample and its im2col / col2im transforms (the fused layer's
//! lowering of a convolution to a GEMM).

use super::vectorized;

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
    fn valid(&self, kk: usize, size: usize, outs: usize) -> std::ops::Range<usize> {
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

    /// The adjoint of [`ConvDims::im2col`]: `gx = sum over patches of gcols` (overwrites `gx`).
    pub(super) fn col2im(&self, gcols: &[f32], gx: &mut [f32]) {
        vectorized(
            #[inline(always)]
            || self.col2im_impl(gcols, gx),
        )
    }

    #[inline(always)]
    fn col2im_impl(&self, gcols: &[f32], gx: &mut [f32]) {
        let p = self.positions();
        gx.fill(0.0);
        for c in 0..self.c {
            let plane = &mut gx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ki in 0..self.k {
                let rows = self.valid(ki, self.h, self.oh);
                for kj in 0..self.k {
                    let cols_ok = self.valid(kj, self.w, self.ow);
                    let r = (c * self.k + ki) * self.k + kj;
                    let src = &gcols[r * p..(r + 1) * p];
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
