//! The fused layer op: a masked or dense linear or convolution layer as one candle
//! [`CustomOp2`] (forward with the optional ELU and max-pool epilogue, and the backward of the
//! input and the trainable tensor); see the [module docs](super).

use super::gemm::{self, Mat};
use super::im2col::ConvDims;
use super::pool::{pool2_plane, pool2_plane_grad};
use super::{cpu_slice, elu, vectorized, with_f32, Effective};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

/// One sample of a convolution: `x` is `[c_in, h, w]`, the result `[c_out, oh, ow]` with
/// `(oh, ow)`, computed with `eff` (`[c_out, c_in k k]`) by im2col and the dense or sparse
/// kernel, on this thread. For inference engines that run samples in parallel themselves.
#[allow(clippy::too_many_arguments)]
pub fn conv_sample(
    eff: &Effective,
    c_in: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    x: &[f32],
) -> Result<(Vec<f32>, usize, usize)> {
    let d = ConvDims::new(&[1, c_in, h, w], c_in, k, stride, pad)
        .ok_or_else(|| anyhow::anyhow!("conv: input [{c_in}, {h}, {w}] smaller than {k}x{k}"))?;
    anyhow::ensure!(
        x.len() == d.input() && eff.dims().1 == d.patch(),
        "conv: input of {} values or weight [{}, {}] do not fit [{c_in}, {h}, {w}], k {k}",
        x.len(),
        eff.dims().0,
        eff.dims().1
    );
    let p = d.positions();
    let mut y = vec![0.0f32; eff.dims().0 * p];
    if d.pointwise() {
        eff.matmul(x, p, &mut y);
    } else {
        with_scratch([d.patch() * p, 0, 0], |cols, _, _| {
            d.im2col(x, cols);
            eff.matmul(cols, p, &mut y);
        });
    }
    Ok((y, d.oh, d.ow))
}

/// 2x2 stride-2 max-pool of `[c, h, w]` (odd sizes floored), as the fused layers compute it.
pub fn max_pool2_sample(z: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let (ph, pw) = (h / 2, w / 2);
    let mut out = vec![0.0f32; c * ph * pw];
    for (plane, o) in z.chunks_exact(h * w).zip(out.chunks_exact_mut(ph * pw)) {
        pool2_plane(plane, w, ph, pw, o);
    }
    out
}

/// The geometry of a fused layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// `x: [batch, in]`, weight `[out, in]`.
    Linear,
    /// `x: [batch, c_in, h, w]`, weight `[c_out, c_in, k, k]`.
    Conv {
        /// Input channels.
        c_in: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Zero padding.
        padding: usize,
    },
}

/// One fused layer application: the effective weight of this forward pass, the geometry, and
/// the frozen weight for the score gradient (`None` for a dense layer, whose trainable tensor
/// is the weight itself).
pub struct FusedLayer {
    /// `W * g(M)` (or `W` for a dense layer).
    pub eff: Effective,
    /// Linear or convolution.
    pub geometry: Geometry,
    /// The frozen weight of a masked layer.
    pub weight: Option<Tensor>,
    /// Convolutions: `Some((scale, shift))` applies `z * scale[c] + shift[c]` per output
    /// channel before the activation (a batch norm with fixed statistics folded into the op,
    /// computed as the stand-alone channel-affine op computes it).
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
    /// `Some(alpha)`: the op's output is `elu(layer(x))` (ELU fused as the epilogue, so the
    /// pre-activation never becomes a graph node).
    pub act: Option<f32>,
    /// Convolutions: a 2x2, stride-2 max-pool after the activation, also fused (the op's
    /// output is the pooled map; odd sizes are floored).
    pub pool2: bool,
    /// The activation before pooling, kept by the forward for the backward when `pool2`.
    saved: std::sync::Mutex<Vec<f32>>,
    /// The score gradient also takes `sign(M)` ([`crate::MaskGradient::StraightThroughAbs`]).
    score_sign: bool,
}

impl FusedLayer {
    /// A layer application; see the fields.
    pub fn new(
        eff: Effective,
        geometry: Geometry,
        weight: Option<Tensor>,
        act: Option<f32>,
        pool2: bool,
    ) -> Self {
        Self {
            eff,
            geometry,
            weight,
            affine: None,
            act,
            pool2: pool2 && matches!(geometry, Geometry::Conv { .. }),
            saved: std::sync::Mutex::new(Vec::new()),
            score_sign: false,
        }
    }

    /// A convolution whose output channel `c` is `z * scale[c] + shift[c]` before the
    /// activation (see [`FusedLayer::affine`]); a linear layer takes no affine epilogue.
    pub fn with_affine(mut self, scale: Vec<f32>, shift: Vec<f32>) -> Result<Self> {
        anyhow::ensure!(
            matches!(self.geometry, Geometry::Conv { .. }),
            "a channel-affine epilogue needs a convolution"
        );
        let c = self.eff.dims().0;
        anyhow::ensure!(
            scale.len() == c && shift.len() == c,
            "channel-affine epilogue: {} scales and {} shifts for {c} channels",
            scale.len(),
            shift.len()
        );
        self.affine = Some((scale, shift));
        Ok(self)
    }

    /// With `on`, the score gradient is `dL/dW_eff * W * sign(M)` (`sign(0) = +1`, as candle's
    /// `abs` backward) instead of `dL/dW_eff * W`.
    pub fn with_score_sign(mut self, on: bool) -> Self {
        self.score_sign = on && self.weight.is_some();
        self
    }
}

/// Samples per weight-gradient partial sum (fixed, so sums do not depend on the thread count).
const GRAD_CHUNK: usize = 16;

thread_local! {
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with this thread's three scratch buffers resized to `sizes` elements (reused
/// between calls, so steady-state training allocates no scratch memory).
fn with_scratch<R>(
    sizes: [usize; 3],
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        for (buf, &n) in s.iter_mut().zip(&sizes) {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
        }
        let [a, b, c] = &mut *s;
        f(&mut a[..sizes[0]], &mut b[..sizes[1]], &mut c[..sizes[2]])
    })
}

/// `dst[c x r] = src[r x c]^T`.
fn transpose(src: &[f32], r: usize, c: usize, dst: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || transpose_impl(src, r, c, dst),
    )
}

/// Tiles of `TILE x TILE`, so both the reads and the strided writes stay in cache lines.
const TILE: usize = 16;

#[inline(always)]
fn transpose_impl(src: &[f32], r: usize, c: usize, dst: &mut [f32]) {
    let (src, dst) = (&src[..r * c], &mut dst[..r * c]);
    for i0 in (0..r).step_by(TILE) {
        let i1 = (i0 + TILE).min(r);
        for j0 in (0..c).step_by(TILE) {
            let j1 = (j0 + TILE).min(c);
            for i in i0..i1 {
                let row = &src[i * c + j0..i * c + j1];
                for (j, v) in (j0..j1).zip(row) {
                    dst[j * r + i] = *v;
                }
            }
        }
    }
}

impl FusedLayer {
    /// Applies the layer to `x`, with `param` (scores or dense weight) as the tensor that
    /// receives the gradient.
    pub fn apply(self, x: &Tensor, param: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op2(param, self)?)
    }

    fn conv_dims(&self, x_dims: &[usize]) -> candle_core::Result<ConvDims> {
        let Geometry::Conv {
            c_in,
            k,
            stride,
            padding,
        } = self.geometry
        else {
            unreachable!("conv_dims of a linear layer")
        };
        ConvDims::new(x_dims, c_in, k, stride, padding).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "fused conv: input {x_dims:?} does not fit weight [{}, {c_in}, {k}, {k}]",
                self.eff.dims().0
            ))
        })
    }

    fn linear_fwd(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let (out_f, in_f) = self.eff.dims();
        let mut y = vec![0.0f32; batch * out_f];
        match &self.eff {
            Effective::Dense { data, .. } => gemm::matmul(
                &mut y,
                Mat::rows(x, batch, in_f),
                Mat::rows(data, out_f, in_f).t(),
                false,
                true,
            ),
            Effective::Sparse(_) => self.sparse_rows(x, batch, in_f, out_f, false, &mut y),
        }
        y
    }

    /// The sparse ternary product for a batch of rows: `out[b] = Weff * input[b]` (or
    /// `Weff^T * input[b]` when `transposed`), `input` `[batch, a]`, `out` `[batch, c]`. Each
    /// thread takes a contiguous block of rows and transposes it, so the kernels add whole
    /// batch rows at a time.
    fn sparse_rows(
        &self,
        input: &[f32],
        batch: usize,
        a: usize,
        c: usize,
        transposed: bool,
        out: &mut [f32],
    ) {
        let chunk = batch.div_ceil(rayon::current_num_threads()).max(1);
        out.par_chunks_mut(chunk * c)
            .zip(input.par_chunks(chunk * a))
            .for_each(|(out, input)| {
                let nb = input.len() / a;
                with_scratch([a * nb, c * nb, 0], |it, ot, _| {
                    transpose(input, nb, a, it);
                    if transposed {
                        self.eff.matmul_t(it, nb, ot);
                    } else {
                        self.eff.matmul(it, nb, ot);
                    }
                    transpose(ot, c, nb, out);
                })
            });
    }

    /// `gx = gy * Weff`.
    fn linear_bwd_input(&self, gy: &[f32], batch: usize) -> Vec<f32> {
        let (out_f, in_f) = self.eff.dims();
        let mut gx = vec![0.0f32; batch * in_f];
        match &self.eff {
            Effective::Dense { data, .. } => gemm::matmul(
                &mut gx,
                Mat::rows(gy, batch, out_f),
                Mat::rows(data, out_f, in_f),
                false,
                true,
            ),
            Effective::Sparse(_) => self.sparse_rows(gy, batch, out_f, in_f, true, &mut gx),
        }
        gx
    }

    fn conv_fwd(&self, x: &[f32], d: ConvDims, batch: usize) -> Vec<f32> {
        let o = self.eff.dims().0;
        let p = d.positions();
        // One sample: the convolution into `z`, then the ELU while it is in cache.
        let sample = |z: &mut [f32], x: &[f32]| {
            if d.pointwise() {
                self.eff.matmul(x, p, z);
            } else {
                with_scratch([d.patch() * p, 0, 0], |cols, _, _| {
                    d.im2col(x, cols);
                    self.eff.matmul(cols, p, z);
                })
            }
            if let Some((scale, shift)) = &self.affine {
                super::channel_affine_sample(z, scale, shift);
            }
            if let Some(alpha) = self.act {
                elu::elu_slice(z, alpha);
            }
        };
        if !self.pool2 {
            let mut y = vec![0.0f32; batch * o * p];
            y.par_chunks_mut(o * p)
                .zip(x.par_chunks(d.input()))
                .for_each(|(y, x)| sample(y, x));
            return y;
        }
        let (ph, pw) = (d.oh / 2, d.ow / 2);
        let mut z = vec![0.0f32; batch * o * p];
        let mut y = vec![0.0f32; batch * o * ph * pw];
        y.par_chunks_mut(o * ph * pw)
            .zip(z.par_chunks_mut(o * p))
            .zip(x.par_chunks(d.input()))
            .for_each(|((y, z), x)| {
                sample(z, x);
                for (plane, out) in z.chunks_exact(p).zip(y.chunks_exact_mut(ph * pw)) {
                    pool2_plane(plane, d.ow, ph, pw, out);
                }
            });
        *self.saved.lock().expect("saved activation lock") = z;
        y
    }

    /// Input gradient (when `want_gx`) and `gWeff = sum_b gy_b cols_b^T` of a convolution.
    ///
    /// With the ELU epilogue, `gy` is the gradient of the activation and `y` its value; each
    /// sample's pre-activation gradient is formed in a reused scratch buffer.
    fn conv_bwd(
        &self,
        x: &[f32],
        gy: &[f32],
        y: &[f32],
        d: ConvDims,
        batch: usize,
        want_gx: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>) {
        let (o, patch) = self.eff.dims();
        let p = d.positions();
        let mut gx = vec![0.0f32; if want_gx { batch * d.input() } else { 0 }];
        let chunks = batch.div_ceil(GRAD_CHUNK);
        let mut gx_chunks: Vec<&mut [f32]> = if want_gx {
            gx.chunks_mut(GRAD_CHUNK * d.input()).collect()
        } else {
            (0..chunks).map(|_| <&mut [f32]>::default()).collect()
        };
        let partial: Vec<Vec<f32>> = gx_chunks
            .par_iter_mut()
            .zip(x.par_chunks(GRAD_CHUNK * d.input()))
            .zip(gy.par_chunks(GRAD_CHUNK * gy.len() / batch))
            .zip(y.par_chunks(GRAD_CHUNK * o * p))
            .map(|(((gx, x), gy), y)| {
                let mut gw = vec![0.0f32; o * patch];
                let samples = x.len() / d.input();
                let cols_len = if d.pointwise() { 0 } else { patch * p };
                let gcols_len = if want_gx && !d.pointwise() {
                    patch * p
                } else {
                    0
                };
                let gz_len = if self.act.is_some() || self.pool2 || self.affine.is_some() {
                    o * p
                } else {
                    0
                };
                for s in 0..samples {
                    let xs = &x[s * d.input()..(s + 1) * d.input()];
                    with_scratch([cols_len, gcols_len, gz_len], |cols, gcols, gz| {
                        // Unpooled `gy` of this sample (with `pool2`, `gy` is pooled).
                        let gys = if self.pool2 {
                            &[][..]
                        } else {
                            &gy[s * o * p..(s + 1) * o * p]
                        };
                        // The pre-activation gradient into `gz`, through the pool and the ELU
                        // (`in_gz`), then through the affine epilogue.
                        let in_gz = if self.pool2 {
                            // `gy` and `y` are pooled; `y` is the activation before pooling.
                            let (ph, pw) = (d.oh / 2, d.ow / 2);
                            let z = &y[s * o * p..(s + 1) * o * p];
                            let g = &gy[s * o * ph * pw..(s + 1) * o * ph * pw];
                            for ((gz, z), g) in gz
                                .chunks_exact_mut(p)
                                .zip(z.chunks_exact(p))
                                .zip(g.chunks_exact(ph * pw))
                            {
                                pool2_plane_grad(z, g, d.ow, ph, pw, self.act, gz);
                            }
                            true
                        } else if let Some(alpha) = self.act {
                            let ys = &y[s * o * p..(s + 1) * o * p];
                            elu::elu_grad_slice(ys, gys, alpha, gz);
                            true
                        } else {
                            false
                        };
                        let gys: &[f32] = match &self.affine {
                            Some((scale, _)) => {
                                if !in_gz {
                                    gz.copy_from_slice(gys);
                                }
                                // As the stand-alone channel-affine op's backward: `g * scale`.
                                for (plane, &a) in gz.chunks_exact_mut(p).zip(scale) {
                                    plane.iter_mut().for_each(|g| *g *= a);
                                }
                                gz
                            }
                            None if in_gz => gz,
                            None => gys,
                        };
                        let cols: &[f32] = if d.pointwise() {
                            xs
                        } else {
                            d.im2col(xs, cols);
                            cols
                        };
                        gemm::matmul(
                            &mut gw,
                            Mat::rows(gys, o, p),
                            Mat::rows(cols, patch, p).t(),
                            s > 0,
                            false,
                        );
                        if want_gx {
                            let gxs = &mut gx[s * d.input()..(s + 1) * d.input()];
                            if d.pointwise() {
                                self.eff.matmul_t(gys, p, gxs);
                            } else {
                                self.eff.matmul_t(gys, p, gcols);
                                d.col2im(gcols, gxs);
                            }
                        }
                    });
                }
                gw
            })
            .collect();
        let mut gw = vec![0.0f32; o * patch];
        for part in &partial {
            for (a, b) in gw.iter_mut().zip(part) {
                *a += b;
            }
        }
        (want_gx.then_some(gx), gw)
    }

    /// Turns `gWeff` into the trainable tensor's gradient: `* W` for scores (the STE), and
    /// `* sign(M)` with [`FusedLayer::with_score_sign`] (`param` holds the scores).
    fn param_grad(&self, mut gw: Vec<f32>, param: &Tensor) -> candle_core::Result<Vec<f32>> {
        let to_candle = |e: anyhow::Error| candle_core::Error::Msg(e.to_string());
        if let Some(w) = &self.weight {
            with_f32(w, |w| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (g, w) in gw.iter_mut().zip(w) {
                            *g *= w;
                        }
                    },
                )
            })
            .map_err(to_candle)?;
        }
        if self.score_sign {
            // sign(0) = +1, as candle's abs backward (`M >= 0`).
            let flip = |(g, m): (&mut f32, &f32)| *g = if *m < 0.0 { -*g } else { *g };
            with_f32(param, |m| gw.iter_mut().zip(m).for_each(flip)).map_err(to_candle)?;
        }
        Ok(gw)
    }
}

fn as_candle<T>(r: Result<T>) -> candle_core::Result<T> {
    r.map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
}

impl CustomOp2 for FusedLayer {
    fn name(&self) -> &'static str {
        "supermask-fused-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1)?;
        let dims = l1.dims();
        let (rows, cols) = self.eff.dims();
        match self.geometry {
            Geometry::Linear => {
                let [batch, inputs] = *dims else {
                    return Err(candle_core::Error::Msg(format!(
                        "fused linear: input must be [batch, {cols}], got {dims:?}"
                    )));
                };
                if inputs != cols {
                    return Err(candle_core::Error::Msg(format!(
                        "fused linear: input must be [batch, {cols}], got {dims:?}"
                    )));
                }
                let mut y = self.linear_fwd(x, batch);
                if let Some(alpha) = self.act {
                    elu::elu_inplace(&mut y, alpha);
                }
                Ok((CpuStorage::F32(y), Shape::from((batch, rows))))
            }
            Geometry::Conv { .. } => {
                let d = self.conv_dims(dims)?;
                let y = self.conv_fwd(x, d, dims[0]);
                let (oh, ow) = if self.pool2 {
                    (d.oh / 2, d.ow / 2)
                } else {
                    (d.oh, d.ow)
                };
                Ok((CpuStorage::F32(y), Shape::from((dims[0], rows, oh, ow))))
            }
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        param: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want_gx = x.track_op();
        let dev = x.device();
        let x_dims = x.dims().to_vec();
        let grads: Result<(Option<Vec<f32>>, Vec<f32>)> = with_f32(x, |xs| {
            with_f32(res, |y| {
                with_f32(grad, |gy| -> Result<(Option<Vec<f32>>, Vec<f32>)> {
                    match self.geometry {
                        Geometry::Linear => {
                            // Through the ELU epilogue first: the pre-activation gradient.
                            let pre;
                            let gy = match self.act {
                                Some(alpha) => {
                                    pre = elu::elu_grad(y, gy, alpha);
                                    &pre[..]
                                }
                                None => gy,
                            };
                            let (out_f, in_f) = self.eff.dims();
                            let batch = x_dims[0];
                            let gx = want_gx.then(|| self.linear_bwd_input(gy, batch));
                            let mut gw = vec![0.0f32; out_f * in_f];
                            gemm::matmul(
                                &mut gw,
                                Mat::rows(gy, batch, out_f).t(),
                                Mat::rows(xs, batch, in_f),
                                false,
                                true,
                            );
                            Ok((gx, gw))
                        }
                        Geometry::Conv { .. } => {
                            let d = self.conv_dims(&x_dims)?;
                            if self.pool2 {
                                let z = self.saved.lock().expect("saved activation lock");
                                anyhow::ensure!(
                                    z.len() == x_dims[0] * self.eff.dims().0 * d.positions(),
                                    "fused conv: no saved activation for the pooled backward"
                                );
                                Ok(self.conv_bwd(xs, gy, &z, d, x_dims[0], want_gx))
                            } else {
                                Ok(self.conv_bwd(xs, gy, y, d, x_dims[0], want_gx))
                            }
                        }
                    }
                })
                .and_then(|r| r)
            })
            .and_then(|r| r)
        })
        .and_then(|r| r);
        let (gx, gw) = as_candle(grads)?;
        let gparam = Tensor::from_vec(self.param_grad(gw, param)?, param.shape(), dev)?;
        let gx = match gx {
            Some(v) => Some(Tensor::from_vec(v, x_dims, dev)?),
            None => None,
        };
        Ok((gx, Some(gparam)))
    }
}
