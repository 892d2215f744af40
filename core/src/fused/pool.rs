//! Fused max-pooling: `k x k` windows with a stride and `-inf` padding, parallel over planes;
//! the backward routes each output's gradient to the first maximum of its window (row-major),
//! found again from the input and the output instead of stored indices.
//!
//! (Candle's own `max_pool2d` backward scales gradients by `1 / k^2` — in candle 0.11.1 a
//! 2x2 pool passes a quarter of the gradient — so the reference path pools with a reshape and
//! `max`, see [`crate::ops::reference::max_pool2`].)

use super::{cpu_slice, with_f32};
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
        let mut y = vec![0.0f32; planes * oh * ow];
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
                    let mut gx = vec![0.0f32; planes * h * w];
                    gx.par_chunks_mut(h * w)
                        .zip(x.par_chunks(h * w))
                        .zip(y.par_chunks(oh * ow).zip(g.par_chunks(oh * ow)))
                        .for_each(|((gx, x), (y, g))| {
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

/// 2x2 stride-2 max-pool of one `h x w` plane (`w` columns) into `ph x pw`.
pub(crate) fn pool2_plane(z: &[f32], w: usize, ph: usize, pw: usize, out: &mut [f32]) {
    for i in 0..ph {
        let (r0, r1) = (&z[2 * i * w..], &z[(2 * i + 1) * w..]);
        for j in 0..pw {
            let c = 2 * j;
            out[i * pw + j] = r0[c].max(r0[c + 1]).max(r1[c]).max(r1[c + 1]);
        }
    }
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
