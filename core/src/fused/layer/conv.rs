//! The fused layer's convolution, forward and backward over a batch, one sample at a time: by
//! im2col and a GEMM (or the sparse ternary kernel), or, for a 3x3 stride-1 "same" convolution,
//! by the direct kernel ([`Direct3`]), which reads the padded input in place instead of writing
//! a 9x larger column matrix: for the forward pass and input gradient with a dense effective
//! weight, for the weight gradient with either form (it does not read the weights). A sparse
//! effective weight with few enough kept entries runs the ternary kernel over the padded
//! input's taps (forward) and the padded output gradient's (input gradient) instead.

use super::super::direct::Direct3;
use super::super::gemm::{self, Mat};
use super::super::im2col::ConvDims;
use super::super::pool::{pool2_plane, pool2_plane_grad};
use super::super::{elu, vectorized, EffLayout as Layout, Effective, Ternary, Values};
use super::{with_scratch, FusedLayer, GRAD_CHUNK};
use rayon::prelude::*;

/// Output positions from which the direct kernel also computes the weight gradient. It sums
/// each tap over all positions in vector lanes and then across the lanes, so short maps spend
/// much of it on the final sums: on 8x8 maps it ran at about half the im2col GEMM's speed, on
/// 16x16 even, on 32x32 three times faster (Zen 1, one thread; docs/results/conv-speed.md).
const DIRECT_WEIGHT_GRAD_MIN_POSITIONS: usize = 256;

/// Largest working set (padded input plus output tiles of one sample, in floats: 192 KiB) for
/// which the direct kernel runs. In isolation it beat im2col and the GEMM on every 3x3 layer
/// of the Conv nets and ResNets, but in a whole signed Conv4 step, whose 64-128-channel layers
/// at 16x16-32x32 need 230-580 KiB, it was slower (2.72 s against 2.58 s a step, one thread,
/// Zen 1 with 512 KiB of L2 per core); the ResNet20 layers need at most 144 KiB and gain.
const DIRECT_MAX_WORKING_SET: usize = 48 * 1024;

/// How one convolution runs: the one place that picks the kernels.
struct Plan<'a> {
    /// The direct kernel, with the dense effective weight it packs, for the forward pass and
    /// the input gradient, when it applies.
    direct: Option<(Direct3, &'a [f32])>,
    /// The direct kernel for the weight gradient (else im2col and a GEMM). The weight
    /// gradient does not read the weights, so this holds for sparse effective weights too.
    weight_grad: Option<Direct3>,
    /// The sparse kernel over the padded input's taps for the forward pass, when it applies;
    /// the input gradient then runs the same kernel over the padded output gradient's taps
    /// with the pattern transposed and flipped ([`transpose_flipped`]).
    sparse_taps: Option<(Direct3, &'a Ternary)>,
}

/// The direct kernel for a convolution of geometry `d` with `eff`, and the dense effective
/// weight (`[c_out, c_in * 9]`) it runs, when it runs: dense effective weights, a geometry
/// [`Direct3::new`] takes, and a working set of at most [`DIRECT_MAX_WORKING_SET`]. Training
/// ([`FusedLayer`]) and inference ([`super::conv_sample`]) both ask here.
pub(in crate::fused) fn direct_plan(eff: &Effective, d: ConvDims) -> Option<(Direct3, &[f32])> {
    match eff {
        Effective::Dense { rows, data, .. } => direct_geometry(d, *rows).map(|dc| (dc, &data[..])),
        Effective::Sparse(_) => None,
    }
}

/// The direct kernel's geometry for a convolution of geometry `d` to `c_out` channels, when
/// [`Direct3::new`] takes it and its working set is at most [`DIRECT_MAX_WORKING_SET`].
fn direct_geometry(d: ConvDims, c_out: usize) -> Option<Direct3> {
    Direct3::new(d.c, c_out, d.h, d.w, d.k, d.stride, d.pad)
        .filter(|dc| dc.working_set() <= DIRECT_MAX_WORKING_SET)
}

/// The sparse ternary kernel over the padded input's tap runs ([`Direct3::tap`]) instead of
/// im2col rows, for the forward pass of training and inference (and, in training, over the
/// padded output gradient's taps for the input gradient), when it applies: a sparse
/// effective weight, a geometry [`Direct3::new`] takes, and few enough kept entries that it
/// pays. Each valid output sums the same values in the same order as through im2col (the
/// padding zeros are im2col's margins), so the results are the same bits. The input gradient
/// sums each input's terms kept entry by kept entry, where `Weff^T gy` and col2im summed them
/// tap by tap, so it agrees with that path to rounding.
///
/// The cost model: a tap run has `h (w + 2)` entries where an im2col row has `h w`, so each
/// kept entry adds `2 h` to the sums, and the column matrix it saves writes `c_in 9 h w`. The
/// taps run when `2 h kept < c_in 9 h w`, that is below `w / (2 c_out)` of the weights kept:
/// a quarter for Conv2's 64-channel 32x32 layer (measured there at 2% and 10% kept:
/// docs/results/conv-speed.md), 1.6% for a 256-channel layer on 8x8 maps.
pub(in crate::fused) fn sparse_direct_plan(
    eff: &Effective,
    d: ConvDims,
) -> Option<(Direct3, &Ternary)> {
    match eff {
        Effective::Sparse(t) if 2 * t.idx.len() < d.patch() * d.w => {
            Direct3::new(d.c, t.rows, d.h, d.w, d.k, d.stride, d.pad).map(|dc| (dc, t))
        }
        _ => None,
    }
}

/// Kept share up to which a 3x3 "same" layer runs sparse, above `train.kernels.sparse_below`,
/// when its kept entries are also few enough for the tap kernels ([`sparse_direct_plan`]).
/// Measured by `cargo bench --bench kernels` (one thread, Zen 4, batch 128, a signed layer's
/// forward and backward, dense against sparse): at 30% kept 26.0 against 30.7 ms for 16
/// channels on 32x32, 26.6 against 27.6 ms for 32 on 16x16; at 50% the dense kernel was
/// ahead or even. Where the taps do not apply the sparse kernels' crossover stays lower: for
/// 64 channels on 32x32 at 30% kept (im2col rows), 529.6 against 415.8 ms.
const TAPS_SPARSE_BELOW: f64 = 0.3;

/// The effective-weight layout for a convolution of `c_out` filters of `k x k` over inputs
/// `[batch, c_in, h, w]` with `stride` and `pad`, given the configured `layout`: an automatic
/// switch at `below` is raised, for a geometry [`Direct3::new`] takes, up to the kept share
/// where the tap kernels apply (`w / (2 c_out)`, see [`sparse_direct_plan`]) and at most
/// [`TAPS_SPARSE_BELOW`]. Always-dense and always-sparse layouts stay as they are.
pub fn conv_layout(
    layout: Layout,
    c_out: usize,
    x: [usize; 4],
    k: usize,
    stride: usize,
    pad: usize,
) -> Layout {
    let [_, c_in, h, w] = x;
    match layout {
        Layout::Auto(below) if Direct3::new(c_in, c_out, h, w, k, stride, pad).is_some() => {
            let taps = TAPS_SPARSE_BELOW.min(w as f64 / (2 * c_out) as f64);
            Layout::Auto(below.max(taps))
        }
        other => other,
    }
}

/// One sample `x` (`[c_in, h, w]`) into `y` (`[c_out, h, w]`) by the sparse kernel over the
/// padded input's taps, with a plan from [`sparse_direct_plan`].
pub(in crate::fused) fn sparse_taps_sample(
    dc: Direct3,
    t: &Ternary,
    c_in: usize,
    x: &[f32],
    y: &mut [f32],
) {
    let q = dc.q();
    with_scratch([dc.padded_len(c_in), t.rows * q, 0], |xp, wide, _| {
        dc.pad(x, c_in, xp);
        let xp = &*xp;
        vectorized(
            #[inline(always)]
            || t.matmul_rows(q, |i| dc.tap(xp, i), wide),
        );
        dc.compact(wide, q, t.rows, y);
    });
}

/// The input gradient's pattern of a 3x3 convolution's sparse effective weight `t`
/// (`[c_out, c_in * 9]`): `[c_in, c_out * 9]` with entry `(ci, co * 9 + 8 - k)` for each kept
/// `(co, ci * 9 + k)`, the transposed and flipped weights of [`Direct3::pack_input_grad`] as a
/// ternary matrix. [`Ternary::matmul_rows`] over the padded output gradient's taps
/// ([`Direct3::tap`]) with it is the input gradient, without `Weff^T gy` into a column matrix
/// and col2im's scatter back. Each row keeps its entries in the order of `t`'s (by `co`, then
/// by `k`), positive ones first for signs.
///
/// Measured (one thread, Zen 4, batch 128, a signed 3x3 layer with the ELU at 10% kept,
/// forward and backward): 16 channels on 32x32 25.7 ms to 20.8 ms, 32 on 16x16 19.4 to
/// 18.2 ms. For 64 channels on 8x8, where the forward pass keeps im2col, the taps were no
/// faster for the input gradient either (18.6 against 18.1 ms), so they follow the forward
/// plan.
fn transpose_flipped(t: &Ternary, c_in: usize) -> Ternary {
    debug_assert_eq!(t.cols, c_in * 9);
    let (rows, cols) = (c_in, t.rows * 9);
    // Entry `e` of `t` (row `co`) goes to row `idx[e] / 9`; negative entries count after the
    // row's positive ones.
    let negative = |co: usize, e: usize| match &t.values {
        Values::Signs { split, .. } => e >= split[co],
        Values::Weights(_) => false,
    };
    let mut plus = vec![0usize; rows];
    let mut minus = vec![0usize; rows];
    for co in 0..t.rows {
        for e in t.ptr[co]..t.ptr[co + 1] {
            let r = t.idx[e] as usize / 9;
            if negative(co, e) {
                minus[r] += 1;
            } else {
                plus[r] += 1;
            }
        }
    }
    let mut ptr = Vec::with_capacity(rows + 1);
    ptr.push(0);
    for r in 0..rows {
        ptr.push(ptr[r] + plus[r] + minus[r]);
    }
    let split: Vec<usize> = (0..rows).map(|r| ptr[r] + plus[r]).collect();
    // Next free slot of each row's positive and negative entries.
    let mut next_plus: Vec<usize> = ptr[..rows].to_vec();
    let mut next_minus = split.clone();
    let mut idx = vec![0u32; t.idx.len()];
    let mut vals = vec![
        0.0f32;
        if matches!(t.values, Values::Weights(_)) {
            idx.len()
        } else {
            0
        }
    ];
    for co in 0..t.rows {
        for e in t.ptr[co]..t.ptr[co + 1] {
            let i = t.idx[e] as usize;
            let (r, k) = (i / 9, i % 9);
            let slot = if negative(co, e) {
                &mut next_minus[r]
            } else {
                &mut next_plus[r]
            };
            idx[*slot] = (co * 9 + 8 - k) as u32;
            if let Values::Weights(v) = &t.values {
                vals[*slot] = v[e];
            }
            *slot += 1;
        }
    }
    let values = match &t.values {
        Values::Signs { magnitude, .. } => Values::Signs {
            split,
            magnitude: *magnitude,
        },
        Values::Weights(_) => Values::Weights(vals),
    };
    Ternary {
        rows,
        cols,
        ptr,
        idx,
        values,
    }
}

impl FusedLayer {
    fn conv_plan(&self, d: ConvDims) -> Plan<'_> {
        Plan {
            direct: direct_plan(&self.eff, d),
            weight_grad: direct_geometry(d, self.eff.dims().0)
                .filter(|_| d.positions() >= DIRECT_WEIGHT_GRAD_MIN_POSITIONS),
            sparse_taps: sparse_direct_plan(&self.eff, d),
        }
    }

    pub(super) fn conv_fwd(&self, x: &[f32], d: ConvDims, batch: usize) -> Vec<f32> {
        let o = self.eff.dims().0;
        let p = d.positions();
        let plan = self.conv_plan(d);
        let direct = plan.direct.map(|(dc, w)| (dc, dc.pack_forward(w)));
        // One sample: the convolution into `z`, then the ELU while it is in cache.
        let sample = |z: &mut [f32], x: &[f32]| {
            if let Some((dc, packed)) = &direct {
                with_scratch(
                    [dc.padded_len(d.c), dc.scratch_len(o), 0],
                    |xp, scratch, _| {
                        dc.pad(x, d.c, xp);
                        dc.conv(packed, d.c, o, xp, scratch, z);
                    },
                )
            } else if let Some((dc, t)) = plan.sparse_taps {
                sparse_taps_sample(dc, t, d.c, x, z);
            } else if d.pointwise() {
                self.eff.matmul(x, p, z);
            } else {
                with_scratch([d.patch() * p, 0, 0], |cols, _, _| {
                    d.im2col(x, cols);
                    self.eff.matmul(cols, p, z);
                })
            }
            if let Some((scale, shift)) = &self.affine {
                super::super::channel_affine_sample(z, scale, shift);
            }
            if let Some(alpha) = self.act {
                elu::elu_slice(z, alpha);
            }
        };
        if !self.pool2 {
            let mut y = super::super::zeros(batch * o * p);
            y.par_chunks_mut(o * p)
                .zip(x.par_chunks(d.input()))
                .for_each(|(y, x)| sample(y, x));
            return y;
        }
        let (ph, pw) = (d.oh / 2, d.ow / 2);
        let mut z = super::super::zeros(batch * o * p);
        let mut y = super::super::zeros(batch * o * ph * pw);
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
    pub(super) fn conv_bwd(
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
        let plan = self.conv_plan(d);
        let packed_t = match plan.direct {
            Some((dc, w)) if want_gx => Some(dc.pack_input_grad(w)),
            _ => None,
        };
        let direct = plan.direct.map(|(dc, _)| dc);
        let grad_taps = match plan.sparse_taps {
            Some((dc, t)) if want_gx => Some((dc, transpose_flipped(t, d.c))),
            _ => None,
        };
        // The padded output gradient serves the direct and tap input gradients and the direct
        // weight gradient alike (one geometry).
        let padded_gy = direct
            .or(plan.weight_grad)
            .or(grad_taps.as_ref().map(|(dc, _)| *dc));
        let mut gx = super::super::zeros(if want_gx { batch * d.input() } else { 0 });
        let chunks = batch.div_ceil(GRAD_CHUNK);
        let mut gx_chunks: Vec<&mut [f32]> = if want_gx {
            gx.chunks_mut(GRAD_CHUNK * d.input()).collect()
        } else {
            (0..chunks).map(|_| <&mut [f32]>::default()).collect()
        };
        // Scratch per sample: [cols | padded x | padded gy], the input gradient's columns (or
        // the direct kernel's output tiles), and the pre-activation gradient.
        let cols_len = if d.pointwise() || plan.weight_grad.is_some() {
            0
        } else {
            patch * p
        };
        let xp_len = plan.weight_grad.map_or(0, |dc| dc.padded_len(d.c));
        let gp_len = padded_gy.map_or(0, |dc| dc.padded_len(o));
        let gcols_len = match (direct, &grad_taps) {
            _ if !want_gx => 0,
            (Some(dc), _) => dc.scratch_len(d.c),
            (None, Some((dc, _))) => d.c * dc.q(),
            (None, None) if d.pointwise() => 0,
            (None, None) => patch * p,
        };
        let gz_len = if self.act.is_some() || self.pool2 || self.affine.is_some() {
            o * p
        } else {
            0
        };
        let partial: Vec<Vec<f32>> = gx_chunks
            .par_iter_mut()
            .zip(x.par_chunks(GRAD_CHUNK * d.input()))
            .zip(gy.par_chunks(GRAD_CHUNK * gy.len() / batch))
            .zip(y.par_chunks(GRAD_CHUNK * o * p))
            .map(|(((gx, x), gy), y)| {
                let mut gw = vec![0.0f32; o * patch];
                let samples = x.len() / d.input();
                for s in 0..samples {
                    let xs = &x[s * d.input()..(s + 1) * d.input()];
                    let sizes = [cols_len + xp_len + gp_len, gcols_len, gz_len];
                    with_scratch(sizes, |buf, gcols, gz| {
                        let gys = self.pre_activation_grad(gy, y, d, s, gz);
                        let (cols, rest) = buf.split_at_mut(cols_len);
                        let (xp, gp) = rest.split_at_mut(xp_len);
                        if let Some(dc) = &padded_gy {
                            dc.pad(gys, o, gp);
                        }
                        match &plan.weight_grad {
                            Some(dc) => {
                                dc.pad(xs, d.c, xp);
                                dc.weight_grad(gp, xp, &mut gw);
                            }
                            None => {
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
                            }
                        }
                        if want_gx {
                            let gxs = &mut gx[s * d.input()..(s + 1) * d.input()];
                            if let (Some(dc), Some(packed_t)) = (&direct, &packed_t) {
                                dc.conv(packed_t, o, d.c, gp, gcols, gxs);
                            } else if let Some((dc, tt)) = &grad_taps {
                                let (q, gp) = (dc.q(), &*gp);
                                vectorized(
                                    #[inline(always)]
                                    || tt.matmul_rows(q, |i| dc.tap(gp, i), gcols),
                                );
                                dc.compact(gcols, q, d.c, gxs);
                            } else if d.pointwise() {
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

    /// Sample `s`'s gradient before the epilogue: through the pool, the ELU and the affine
    /// scale into `gz` (which it returns), or `gy`'s own slice when there is no epilogue.
    fn pre_activation_grad<'a>(
        &self,
        gy: &'a [f32],
        y: &[f32],
        d: ConvDims,
        s: usize,
        gz: &'a mut [f32],
    ) -> &'a [f32] {
        let o = self.eff.dims().0;
        let p = d.positions();
        // Unpooled `gy` of this sample (with `pool2`, `gy` is pooled).
        let gys = if self.pool2 {
            &[][..]
        } else {
            &gy[s * o * p..(s + 1) * o * p]
        };
        // The pre-activation gradient into `gz`, through the pool and the ELU (`in_gz`), then
        // through the affine epilogue.
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
        match &self.affine {
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
        }
    }
}
