//! One sample at a time, for inference engines that run samples in parallel themselves: a
//! convolution and a 2x2 max-pool on this thread, with the activation in the layout the next
//! step reads in place ([`SampleLayout`]), so that a chain such as convolution, ELU,
//! convolution, max-pool neither compacts a kernel's output nor pads the next kernel's input.

use super::super::direct::{Direct3, PAD_TAIL};
use super::super::im2col::ConvDims;
use super::super::pool::pool2_plane;
use super::super::{vectorized, Effective};
use super::{conv, with_scratch};
use crate::Result;

/// How one sample's image activation `[c, h, w]` is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleLayout {
    /// `[c, h, w]`.
    Dense,
    /// `[c, h + 2, w + 2]` with zero borders, then a short zero tail: the input layout of the
    /// direct and tap kernels of a 3x3 "same" convolution, which read it in place. An ELU
    /// keeps it (`elu(0) = 0`).
    Padded,
    /// `[c, h (w + 2)]`: each row's `w` values, then two that are not values. The tap
    /// kernel's output as it computes it, which a 2x2 max-pool reads in place.
    Wide,
}

impl SampleLayout {
    /// Values a `[c, h, w]` activation takes in this layout.
    pub fn len(self, c: usize, h: usize, w: usize) -> usize {
        match self {
            Self::Dense => c * h * w,
            // As `Direct3::padded_len`, for any geometry.
            Self::Padded => c * (h + 2) * (w + 2) + PAD_TAIL,
            Self::Wide => c * h * (w + 2),
        }
    }

    /// Values the output of a `k x k` convolution with `stride` and `pad` to `c_out`
    /// channels takes in this layout, for `[_, h, w]` inputs (0 for inputs smaller than the
    /// kernel): for sizing a buffer before [`conv_sample_into`].
    pub fn conv_len(self, c_out: usize, [h, w]: [usize; 2], [k, stride, pad]: [usize; 3]) -> usize {
        ConvDims::new(&[1, 1, h, w], 1, k, stride, pad).map_or(0, |d| self.len(c_out, d.oh, d.ow))
    }
}

/// `x` as the direct kernels' padded input: itself when it is [`SampleLayout::Padded`], else
/// padded into `xp` (which then has [`Direct3::padded_len`] values).
fn padded_input<'a>(
    dc: &Direct3,
    (x, layout): (&'a [f32], SampleLayout),
    c_in: usize,
    xp: &'a mut [f32],
) -> &'a [f32] {
    if layout == SampleLayout::Padded {
        x
    } else {
        dc.pad(x, c_in, xp);
        xp
    }
}

/// What a convolution of `eff` over `[c_in, h, w]` inputs (`k`, `stride`, `pad`) reads and
/// writes beside [`SampleLayout::Dense`]: `(reads padded, writes padded and wide)`. The direct
/// kernel reads a padded input, the tap kernel too and writes either; other paths are dense.
pub fn conv_sample_layouts(
    eff: &Effective,
    c_in: usize,
    [h, w]: [usize; 2],
    k: usize,
    stride: usize,
    pad: usize,
) -> (bool, bool) {
    let Some(d) = ConvDims::new(&[1, c_in, h, w], c_in, k, stride, pad) else {
        return (false, false);
    };
    if eff.dims().1 != d.patch() {
        return (false, false);
    }
    let taps = conv::sparse_direct_plan(eff, d).is_some();
    (taps || conv::direct_plan(eff, d).is_some(), taps)
}

/// The direct 3x3 kernel's packed form of a dense effective weight `eff` (`[c_out, c_in 9]`),
/// for [`conv_sample_into`] to use instead of packing it again for every sample (a tenth of a
/// ResNet20 inference did that); `None` for a sparse weight, another geometry than 3x3 stride
/// 1 pad 1, or a CPU without the kernel.
pub fn pack_direct(
    eff: &Effective,
    c_in: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Option<Vec<f32>> {
    match eff {
        Effective::Dense { rows, data, .. } if (k, stride, pad) == (3, 1, 1) => {
            Direct3::pack_weights(c_in, *rows, data)
        }
        _ => None,
    }
}

/// One sample of a convolution: `x` is `[c_in, h, w]`, the result `[c_out, oh, ow]` with
/// `(oh, ow)`, computed with `eff` (`[c_out, c_in k k]`) by the direct 3x3 kernel, the sparse
/// kernel over the padded input's taps (3x3 "same" layers), or im2col and the dense or sparse
/// kernel, on this thread.
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
    let mut y = Vec::new();
    let (oh, ow) = conv_sample_into(
        (eff, None),
        [c_in, h, w],
        [k, stride, pad],
        (x, SampleLayout::Dense),
        (&mut y, SampleLayout::Dense),
    )?;
    Ok((y, oh, ow))
}

/// [`conv_sample`] from `x` in its layout into `y` (resized, reusing its memory) in its
/// layout, for `[c_in, h, w]` inputs and `[k, stride, pad]`; the layouts beside
/// [`SampleLayout::Dense`] must be ones [`conv_sample_layouts`] allows. `packed`, when given,
/// is [`pack_direct`] of `eff`. The values are the same bits in every layout.
pub fn conv_sample_into(
    (eff, packed): (&Effective, Option<&[f32]>),
    [c_in, h, w]: [usize; 3],
    [k, stride, pad]: [usize; 3],
    (x, x_layout): (&[f32], SampleLayout),
    (y, y_layout): (&mut Vec<f32>, SampleLayout),
) -> Result<(usize, usize)> {
    let d = ConvDims::new(&[1, c_in, h, w], c_in, k, stride, pad)
        .ok_or_else(|| anyhow::anyhow!("conv: input [{c_in}, {h}, {w}] smaller than {k}x{k}"))?;
    anyhow::ensure!(
        x.len() == x_layout.len(c_in, h, w) && eff.dims().1 == d.patch(),
        "conv: input of {} values or weight [{}, {}] do not fit [{c_in}, {h}, {w}] \
         ({x_layout:?}), k {k}",
        x.len(),
        eff.dims().0,
        eff.dims().1
    );
    let o = eff.dims().0;
    let (reads_padded, writes_other) = conv_sample_layouts(eff, c_in, [h, w], k, stride, pad);
    anyhow::ensure!(
        (x_layout != SampleLayout::Wide && (reads_padded || x_layout == SampleLayout::Dense))
            && (writes_other || y_layout == SampleLayout::Dense),
        "conv: this layer's kernel does not read {x_layout:?} or write {y_layout:?} samples"
    );
    // The direct and tap kernels write every value of `y`, so its old values may stay; the
    // GEMM paths get zeros.
    let len = y_layout.len(o, d.oh, d.ow);
    y.truncate(len);
    y.resize(len, 0.0);
    // Scratch for padding `x`, unless it is padded already.
    let xp_len = |dc: &Direct3| {
        if x_layout == SampleLayout::Padded {
            0
        } else {
            dc.padded_len(c_in)
        }
    };
    if let Some((dc, weights)) = conv::direct_plan(eff, d) {
        let packed = match packed {
            Some(p) => {
                anyhow::ensure!(
                    p.len() == dc.packed_len(),
                    "conv: {} packed weights where the kernel takes {}",
                    p.len(),
                    dc.packed_len()
                );
                std::borrow::Cow::Borrowed(p)
            }
            None => std::borrow::Cow::Owned(dc.pack_forward(weights)),
        };
        with_scratch([xp_len(&dc), dc.scratch_len(o), 0], |xp, scratch, _| {
            let xp = padded_input(&dc, (x, x_layout), c_in, xp);
            dc.conv(&packed, c_in, o, xp, scratch, y);
        });
    } else if let Some((dc, t)) = conv::sparse_direct_plan(eff, d) {
        let q = dc.q();
        let wide_len = if y_layout == SampleLayout::Dense {
            o * q
        } else {
            0
        };
        with_scratch([xp_len(&dc), wide_len, 0], |xp, wide, _| {
            let xp = padded_input(&dc, (x, x_layout), c_in, xp);
            let taps = |i| dc.tap(xp, i);
            match y_layout {
                SampleLayout::Dense => {
                    vectorized(
                        #[inline(always)]
                        || t.matmul_rows(q, taps, wide),
                    );
                    dc.compact(wide, q, o, y);
                }
                SampleLayout::Wide => vectorized(
                    #[inline(always)]
                    || t.matmul_rows(q, taps, y),
                ),
                SampleLayout::Padded => {
                    let plane = (d.oh + 2) * (d.ow + 2);
                    vectorized(
                        #[inline(always)]
                        || t.matmul_rows_at(q, taps, &mut y[d.ow + 3..], plane),
                    );
                    dc.zero_borders(y, o);
                }
            }
        });
    } else if d.pointwise() {
        y.fill(0.0);
        eff.matmul(x, d.positions(), y);
    } else {
        y.fill(0.0);
        with_scratch([d.patch() * d.positions(), 0, 0], |cols, _, _| {
            d.im2col(x, cols);
            eff.matmul(cols, d.positions(), y);
        });
    }
    Ok((d.oh, d.ow))
}

/// 2x2 stride-2 max-pool of `[c, h, w]` (odd sizes floored), as the fused layers compute it.
pub fn max_pool2_sample(z: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::new();
    max_pool2_sample_into((z, SampleLayout::Dense), [c, h, w], &mut out);
    out
}

/// [`max_pool2_sample`] from `z` (`[c, h, w]`, [`SampleLayout::Dense`] or
/// [`SampleLayout::Wide`]) into `out` (resized, reusing its memory; `[c, h / 2, w / 2]`).
pub fn max_pool2_sample_into(
    (z, layout): (&[f32], SampleLayout),
    [c, h, w]: [usize; 3],
    out: &mut Vec<f32>,
) {
    let (ph, pw) = (h / 2, w / 2);
    let (plane, row) = match layout {
        SampleLayout::Wide => (h * (w + 2), w + 2),
        _ => (h * w, w),
    };
    assert!(
        layout != SampleLayout::Padded && z.len() >= c * plane,
        "max-pool: {} values are not a {layout:?} [{c}, {h}, {w}]",
        z.len()
    );
    // Every value is written below, so old ones may stay.
    out.truncate(c * ph * pw);
    out.resize(c * ph * pw, 0.0);
    if ph * pw == 0 {
        return;
    }
    for (plane, o) in z.chunks(plane).zip(out.chunks_exact_mut(ph * pw)) {
        pool2_plane(plane, row, ph, pw, o);
    }
}
