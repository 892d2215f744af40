//! Fused max-pooling: `k x k` windows with a stride and `-inf` padding, parallel over planes;
//! the backward routes each output's gradient to the first maximum of its window (row-major),
//! found again from the input and the output instead of stored indices.
//!
//! A "same" pool (stride 1, odd `k`, `pad = (k - 1) / 2`: the ResNet stem's 3x3) runs
//! separably, the maximum over each row's window and then over the window's rows, in
//! vectorizable passes; its backward finds each output's first maximum tap by tap and adds in
//! the generic backward's order, so both paths give the same bits (the unit tests compare
//! them).
//!
//! (Candle's own `max_pool2d` backward scales gradients by `1 / k^2` — in candle 0.11.1 a
//! 2x2 pool passes a quarter of the gradient — so the reference path pools with a reshape and
//! `max`, see [`crate::ops::reference::max_pool2`].)

use super::{cpu_slice, vectorized, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Max-pool geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MaxPool {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool {
    fn out(&self, size: usize) -> usize {
        (size + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Input index range of output `o` along an axis of length `size`.
    fn window(&self, o: usize, size: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride).saturating_sub(self.pad);
        let end = (o * self.stride + self.k)
            .saturating_sub(self.pad)
            .min(size);
        start..end
    }

    /// Output size `(oh, ow)` of an `h x w` plane.
    pub(crate) fn out_dims(&self, h: usize, w: usize) -> (usize, usize) {
        (self.out(h), self.out(w))
    }

    /// Pools one `h x w` plane `x` into `y` (`oh x ow`).
    pub(crate) fn plane(&self, x: &[f32], h: usize, w: usize, y: &mut [f32]) {
        if self.same() {
            vectorized(
                #[inline(always)]
                || self.same_plane(x, h, w, y),
            )
        } else {
            self.generic_plane(x, h, w, y)
        }
    }

    /// Whether the pool keeps the size with stride 1 (odd `k`, `pad = (k - 1) / 2`), the case
    /// [`Self::same_plane`] and [`Self::same_plane_grad`] run (tap indices exact in `f32`).
    fn same(&self) -> bool {
        self.stride == 1 && 2 * self.pad + 1 == self.k && self.k < 4096
    }

    /// The window's definition, output by output: the reference the fast paths are held to.
    fn generic_plane(&self, x: &[f32], h: usize, w: usize, y: &mut [f32]) {
        let (oh, ow) = self.out_dims(h, w);
        for i in 0..oh {
            let rows = self.window(i, h);
            for j in 0..ow {
                let cols = self.window(j, w);
                let mut m = f32::NEG_INFINITY;
                for r in rows.clone() {
                    for v in &x[r * w + cols.start..r * w + cols.end] {
                        m = m.max(*v);
                    }
                }
                y[i * ow + j] = m;
            }
        }
    }

    /// A same pool, separably: each row's running maximum over the tap columns, then the
    /// running maximum of those over the tap rows. Taken in the window's order from `-inf`,
    /// the maxima equal [`Self::generic_plane`]'s (a maximum rounds nothing).
    #[inline(always)]
    fn same_plane(&self, x: &[f32], h: usize, w: usize, y: &mut [f32]) {
        let mut rows = vec![f32::NEG_INFINITY; h * w];
        for (src, dst) in x.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
            for tap in 0..self.k {
                let Some((lo, hi)) = self.span(tap, w) else {
                    continue;
                };
                let shifted = &src[lo + tap - self.pad..hi + tap - self.pad];
                for (o, v) in dst[lo..hi].iter_mut().zip(shifted) {
                    *o = o.max(*v);
                }
            }
        }
        let y = &mut y[..h * w];
        y.fill(f32::NEG_INFINITY);
        for tap in 0..self.k {
            let Some((lo, hi)) = self.span(tap, h) else {
                continue;
            };
            let shifted = &rows[(lo + tap - self.pad) * w..(hi + tap - self.pad) * w];
            for (o, v) in y[lo * w..hi * w].iter_mut().zip(shifted) {
                *o = o.max(*v);
            }
        }
    }

    /// The outputs `lo..hi` along an axis of `n` whose tap `tap` (of `k`) lies inside the
    /// axis, input index `j + tap - pad`; `None` where no output's does. (Rows and columns.)
    #[inline(always)]
    fn span(&self, tap: usize, n: usize) -> Option<(usize, usize)> {
        let lo = self.pad.saturating_sub(tap);
        let hi = (n + self.pad).saturating_sub(tap).min(n);
        (lo < hi).then_some((lo, hi))
    }

    /// The backward of one plane, output by output: each output's gradient goes to the first
    /// input of its window (row-major) equal to the output.
    fn generic_plane_grad(
        &self,
        x: &[f32],
        y: &[f32],
        g: &[f32],
        h: usize,
        w: usize,
        gx: &mut [f32],
    ) {
        let (oh, ow) = self.out_dims(h, w);
        for i in 0..oh {
            let rows = self.window(i, h);
            for j in 0..ow {
                let cols = self.window(j, w);
                let m = y[i * ow + j];
                'window: for r in rows.clone() {
                    for c in cols.clone() {
                        if x[r * w + c] == m {
                            gx[r * w + c] += g[i * ow + j];
                            break 'window;
                        }
                    }
                }
            }
        }
    }

    /// [`Self::generic_plane_grad`] for a same pool, tap by tap. First each output's first
    /// tap (row-major) whose input equals it; then each tap adds its outputs' gradients into
    /// the shifted inputs, taps in reverse, so every input receives its outputs' gradients in
    /// row-major order of the outputs as the generic backward adds them (the other outputs
    /// add `+0.0`, which changes no sum that starts at `+0.0`).
    #[inline(always)]
    fn same_plane_grad(&self, x: &[f32], y: &[f32], g: &[f32], h: usize, w: usize, gx: &mut [f32]) {
        let (k, pad) = (self.k, self.pad);
        // The taps in row-major order, each with the output rows and columns it reaches.
        let taps = (0..k)
            .flat_map(|ty| (0..k).map(move |tx| (ty, tx)))
            .filter_map(|(ty, tx)| Some((ty, tx, self.span(ty, h)?, self.span(tx, w)?)));
        // Tap indices as `f32` (exact below 2^24; -1 for none yet), so that both passes
        // compare and select in one lane width and vectorize.
        let mut first = vec![-1.0f32; h * w];
        for (ty, tx, (rlo, rhi), (lo, hi)) in taps.clone() {
            let t = (ty * k + tx) as f32;
            for i in rlo..rhi {
                let r = i + ty - pad;
                let xs = &x[r * w + lo + tx - pad..r * w + hi + tx - pad];
                let (ys, fs) = (
                    &y[i * w + lo..i * w + hi],
                    &mut first[i * w + lo..i * w + hi],
                );
                for ((f, &xv), &yv) in fs.iter_mut().zip(xs).zip(ys) {
                    *f = if *f < 0.0 && xv == yv { t } else { *f };
                }
            }
        }
        for (ty, tx, (rlo, rhi), (lo, hi)) in taps.rev() {
            let t = (ty * k + tx) as f32;
            for i in rlo..rhi {
                let r = i + ty - pad;
                let gs = &g[i * w + lo..i * w + hi];
                let fs = &first[i * w + lo..i * w + hi];
                let out = &mut gx[r * w + lo + tx - pad..r * w + hi + tx - pad];
                for ((o, &gv), &f) in out.iter_mut().zip(gs).zip(fs) {
                    *o += if f == t { gv } else { 0.0 };
                }
            }
        }
    }

    fn dims(&self, l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        let d = l.dims();
        match *d {
            [n, c, h, w] if h + 2 * self.pad >= self.k && w + 2 * self.pad >= self.k => {
                Ok((n * c, h, w, 0))
            }
            _ => Err(candle_core::Error::Msg(format!(
                "max-pool {}x{}: input {d:?} must be [n, c, h, w] of at least the window",
                self.k, self.k
            ))),
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "supermask-max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l)?;
        let (planes, h, w, _) = self.dims(l)?;
        let (oh, ow) = (self.out(h), self.out(w));
        let mut y = super::zeros(planes * oh * ow);
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(y, x)| self.plane(x, h, w, y));
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], oh, ow))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (planes, h, w, _) = self.dims(arg.layout())?;
        let (oh, ow) = (self.out(h), self.out(w));
        let gx = with_f32(arg, |x| {
            with_f32(res, |y| {
                with_f32(grad, |g| {
                    let mut gx = super::zeros(planes * h * w);
                    gx.par_chunks_mut(h * w)
                        .zip(x.par_chunks(h * w))
                        .zip(y.par_chunks(oh * ow).zip(g.par_chunks(oh * ow)))
                        .for_each(|((gx, x), (y, g))| {
                            if self.same() {
                                vectorized(
                                    #[inline(always)]
                                    || self.same_plane_grad(x, y, g, h, w, gx),
                                )
                            } else {
                                self.generic_plane_grad(x, y, g, h, w, gx)
                            }
                        });
                    gx
                })
            })
        })
        .and_then(|r| r)
        .and_then(|r| r)
        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

/// 2x2 stride-2 max-pool of one `h x w` plane (`w` columns) into `ph x pw`: each window's
/// `max(max(max(top left, top right), bottom left), bottom right)`.
///
/// Vectorized for the CPU's widest vectors (the pairs of a row are de-interleaved by the
/// compiler's strided loads); each output is the same chain of `max` in the same order as the
/// scalar loop, so the bits (NaN and signed-zero cases included) do not depend on the CPU. The
/// scalar loop took a fifth of a Conv2 inference at 2% kept (Zen 4).
pub(crate) fn pool2_plane(z: &[f32], w: usize, ph: usize, pw: usize, out: &mut [f32]) {
    if pw == 0 {
        return;
    }
    super::vectorized(
        #[inline(always)]
        || {
            for (i, o) in out[..ph * pw].chunks_exact_mut(pw).enumerate() {
                let r0 = &z[2 * i * w..][..2 * pw];
                let r1 = &z[(2 * i + 1) * w..][..2 * pw];
                for ((o, a), b) in o.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                    *o = a[0].max(a[1]).max(b[0]).max(b[1]);
                }
            }
        },
    )
}

/// The gradient of [`pool2_plane`] (and of the ELU before it, from its output `z`): each
/// window's gradient goes to its first maximum in row-major order, as the stand-alone pool's.
pub(crate) fn pool2_plane_grad(
    z: &[f32],
    g: &[f32],
    w: usize,
    ph: usize,
    pw: usize,
    act: Option<f32>,
    gz: &mut [f32],
) {
    gz.fill(0.0);
    for i in 0..ph {
        for j in 0..pw {
            let at = [
                2 * i * w + 2 * j,
                2 * i * w + 2 * j + 1,
                (2 * i + 1) * w + 2 * j,
                (2 * i + 1) * w + 2 * j + 1,
            ];
            let m = at.iter().fold(f32::NEG_INFINITY, |m, &k| m.max(z[k]));
            if let Some(&k) = at.iter().find(|&&k| z[k] == m) {
                let d = match act {
                    Some(alpha) if z[k] <= 0.0 => z[k] + alpha,
                    _ => 1.0,
                };
                gz[k] = g[i * pw + j] * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MaxPool;
    use crate::rng::spread_values;

    /// Values on a grid of nine levels, so windows tie, with a NaN and a `-inf`; `+ 0.0`
    /// turns `-0.0` into `+0.0` (the sign of a zero maximum is not specified by `max`).
    fn tied_plane(n: usize, seed: u64) -> Vec<f32> {
        let mut x: Vec<f32> = spread_values(n, seed, -1.0, 1.0)
            .iter()
            .map(|v| (v * 4.0).round() / 4.0 + 0.0)
            .collect();
        if n > 3 {
            x[n / 2] = f32::NAN;
            x[n / 3] = f32::NEG_INFINITY;
        }
        x
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// The vectorized 2x2 pool gives the scalar window chain's bits, NaNs and ties included,
    /// for even and odd sizes (odd ones drop the last row and column), whole vectors and tails.
    #[test]
    fn pool2_plane_matches_the_scalar_chain_bit_for_bit() {
        for (h, w) in [(1, 1), (2, 2), (3, 5), (4, 34), (32, 32), (9, 67)] {
            let x = tied_plane(h * w, (h * 100 + w) as u64);
            let (ph, pw) = (h / 2, w / 2);
            let mut want = vec![0.0f32; ph * pw];
            for i in 0..ph {
                for j in 0..pw {
                    let at = |r: usize, c: usize| x[(2 * i + r) * w + 2 * j + c];
                    want[i * pw + j] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                }
            }
            let mut got = vec![7.0f32; ph * pw];
            super::pool2_plane(&x, w, ph, pw, &mut got);
            assert_eq!(bits(&got), bits(&want), "{h}x{w}");
        }
    }

    /// The separable same pool and its tap-by-tap backward give the generic window loop's
    /// bits: the same maxima, the same first maximum on ties, and gradient sums added in the
    /// same order (the gradients are not on a grid, so another order rounds differently).
    #[test]
    fn same_pool_matches_the_window_loop_bit_for_bit() {
        for k in [3, 5] {
            let pool = MaxPool {
                k,
                stride: 1,
                pad: k / 2,
            };
            assert!(pool.same());
            for (h, w) in [(1, 1), (1, 6), (6, 1), (2, 3), (7, 9), (32, 32)] {
                let seed = (k * 1000 + h * 100 + w) as u64;
                let x = tied_plane(h * w, seed);
                let g = spread_values(h * w, seed + 1, -1.0, 1.0);
                let (mut fast, mut slow) = (vec![0.0; h * w], vec![0.0; h * w]);
                pool.same_plane(&x, h, w, &mut fast);
                pool.generic_plane(&x, h, w, &mut slow);
                assert_eq!(bits(&fast), bits(&slow), "forward k {k}, {h}x{w}");
                let (mut gfast, mut gslow) = (vec![0.0; h * w], vec![0.0; h * w]);
                pool.same_plane_grad(&x, &slow, &g, h, w, &mut gfast);
                pool.generic_plane_grad(&x, &slow, &g, h, w, &mut gslow);
                assert_eq!(bits(&gfast), bits(&gslow), "backward k {k}, {h}x{w}");
            }
        }
    }
}
