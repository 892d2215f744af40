//! The fused layer op: a masked or dense linear or convolution layer as one candle
//! [`CustomOp2`] (forward with the optional ELU and max-pool epilogue, and the backward of the
//! input and the trainable tensor); see the [module docs](super).

use super::gemm::{self, Mat};
use super::im2col::ConvDims;
use super::{cpu_slice, elu, vectorized, with_f32, Effective, ELEMENTWISE_CHUNK};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

mod conv;
mod sample;
pub use conv::conv_layout;
pub use sample::{
    conv_sample, conv_sample_into, conv_sample_layouts, max_pool2_sample, max_pool2_sample_into,
    pack_direct, SampleLayout,
};

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

/// `y [batch x out_f] = x [batch x in_f] * w [out_f x in_f]^T`, as that product or, when
/// `transposed`, as `w * x^T` transposed into `y`.
///
/// A parallel product gives each thread a block of the destination's rows
/// ([`gemm::matmul`]), and each thread's gemm call packs the whole of the other operand: the
/// weight, for the FCN's first layer 940 KB a thread. The transposed form shares the batch
/// instead, which is the smaller operand when the layer has more outputs than the batch has
/// rows (signed FCN step, `profile_step`, 15 alternating runs: median 1.82 -> 1.52 ms in a
/// slow stretch of the VM; `docs/results/fcn-threads.md`). Each
/// output is the same sum in the same order either way (gemm's summation over `in_f` depends
/// on `in_f` alone), so the bits do not change (`transposed_forward_gives_the_same_bits`).
fn dense_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    batch: usize,
    in_f: usize,
    out_f: usize,
    transposed: bool,
) {
    let (x, w) = (Mat::rows(x, batch, in_f), Mat::rows(w, out_f, in_f));
    if !transposed {
        return gemm::matmul(y, x, w.t(), false, true);
    }
    // A buffer of its own: this thread's scratch must not stay borrowed across the parallel
    // product, whose wait may run another job that takes it.
    let mut yt = super::zeros(out_f * batch);
    gemm::matmul(&mut yt, w, x.t(), false, true);
    transpose(&yt, out_f, batch, y);
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
        crate::tape::apply2(&x.contiguous()?, param, self)
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
        let mut y = super::zeros(batch * out_f);
        match &self.eff {
            Effective::Dense { data, .. } => {
                dense_forward(&mut y, x, data, batch, in_f, out_f, out_f > batch);
            }
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
        let mut gx = super::zeros(batch * in_f);
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

    /// Turns `gWeff` into the trainable tensor's gradient: `* W` for scores (the STE), and
    /// `* sign(M)` with [`FusedLayer::with_score_sign`] (`param` holds the scores).
    fn param_grad(&self, mut gw: Vec<f32>, param: &Tensor) -> candle_core::Result<Vec<f32>> {
        let to_candle = |e: anyhow::Error| candle_core::Error::Msg(e.to_string());
        if let Some(w) = &self.weight {
            with_f32(w, |w| {
                gw.par_chunks_mut(ELEMENTWISE_CHUNK)
                    .zip(w.par_chunks(ELEMENTWISE_CHUNK))
                    .for_each(|(gw, w)| {
                        vectorized(
                            #[inline(always)]
                            || {
                                for (g, w) in gw.iter_mut().zip(w) {
                                    *g *= w;
                                }
                            },
                        )
                    })
            })
            .map_err(to_candle)?;
        }
        if self.score_sign {
            // sign(0) = +1, as candle's abs backward (`M >= 0`).
            let flip = |(g, m): (&mut f32, &f32)| *g = if *m < 0.0 { -*g } else { *g };
            with_f32(param, |m| {
                gw.par_chunks_mut(ELEMENTWISE_CHUNK)
                    .zip(m.par_chunks(ELEMENTWISE_CHUNK))
                    .for_each(|(gw, m)| gw.iter_mut().zip(m).for_each(flip))
            })
            .map_err(to_candle)?;
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

#[cfg(test)]
mod tests {
    use super::super::gemm::tests::values;
    use super::*;

    #[test]
    fn transposed_forward_gives_the_same_bits() {
        // (batch, in, out): the FCN's layers in training and evaluation, a conv head's, and
        // uneven sizes with a depth over one of gemm's blocks.
        let shapes = [
            (128, 784, 300),
            (128, 300, 100),
            (128, 100, 10),
            (1000, 784, 300),
            (128, 4096, 256),
            (37, 1031, 77),
        ];
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (i, &(batch, in_f, out_f)) in shapes.iter().enumerate() {
                let x = values(batch * in_f, 2 * i as u32);
                let w = values(out_f * in_f, 2 * i as u32 + 1);
                let run = |transposed| {
                    let mut y = vec![f32::NAN; batch * out_f];
                    pool.install(|| dense_forward(&mut y, &x, &w, batch, in_f, out_f, transposed));
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                let (direct, transposed) = (run(false), run(true));
                assert!(direct.iter().any(|&b| b != 0));
                assert_eq!(
                    direct, transposed,
                    "{batch} x {in_f} x {out_f}, {threads} threads"
                );
            }
        }
    }
}
