//! Direct 3x3, stride-1, pad-1 convolution for one sample, without im2col.
//!
//! The input is copied once into a zero-padded layout, `[c][(h + 2) * (w + 2)]` plus a short
//! zero tail. In that layout the input of output position `q = oh * (w + 2) + ow` at kernel
//! offset `(ky, kx)` is `xp[c * plane + q + ky * (w + 2) + kx]`: contiguous in `q` for every
//! offset. So a register tile of `OB` output channels by `L` consecutive positions loads its
//! inputs straight from `xp` (the two positions past each row's end are computed and
//! dropped), where im2col would first write a 9x larger matrix that the GEMM then packs again.
//!
//! The input gradient of such a convolution is the same kernel over the zero-padded output
//! gradient with the weights transposed and flipped ([`Direct3::pack_input_grad`]); the weight
//! gradient ([`Direct3::weight_grad`]) reduces over the same flattened positions, with the
//! output gradient's dropped positions zero.
//!
//! Sums run in a fixed order (input channel, then `ky`, then `kx`; the weight gradient per
//! 8-lane chunk of positions, then lane by lane), so results do not depend on the thread count.

use pulp::{bytemuck::cast, f32x8, x86::V3};

/// Output channels per register tile.
const OB: usize = 4;
/// Positions per forward register tile (two 8-float vectors): 8 accumulators, 2 loads and
/// 4 broadcasts per 8 fused multiply-adds, within AVX2's 16 registers.
const L: usize = 16;
/// Zeros after the padded planes ([`Direct3::padded_len`]): the last tile's reads past the
/// last plane.
pub(super) const PAD_TAIL: usize = L + 2;
/// Output channels per weight-gradient tile: 3 by the 3 `kx` offsets is 9 accumulators, plus
/// 3 input and 1 gradient vectors.
const OW: usize = 3;

/// The geometry of a direct 3x3 convolution of one `[c_in, h, w]` sample to `c_out` channels.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct3 {
    simd: V3,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
}

impl Direct3 {
    /// The direct kernel for a `k x k`, `stride`, `pad` convolution, when it applies: 3x3,
    /// stride 1, pad 1, rows of at least 6 (shorter rows waste most of each tile), and an x86
    /// CPU with AVX2 and FMA (the tiles are 8-float fused multiply-adds).
    pub(super) fn new(
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Self> {
        let fits = k == 3 && stride == 1 && pad == 1 && w >= 6 && h >= 1 && c_in > 0;
        let simd = V3::try_new()?;
        (fits && c_out > 0).then_some(Self {
            simd,
            c_in,
            c_out,
            h,
            w,
        })
    }

    fn wp(&self) -> usize {
        self.w + 2
    }
    fn plane(&self) -> usize {
        (self.h + 2) * self.wp()
    }
    /// Flattened output positions, with the two dropped ones per row.
    pub(super) fn q(&self) -> usize {
        self.h * self.wp()
    }
    fn q_tiles(&self) -> usize {
        self.q().div_ceil(L) * L
    }

    /// Length of a padded buffer of `c` channels ([`Direct3::pad`]): the planes and a tail that
    /// the last tile's dropped positions read past the last plane.
    pub(super) fn padded_len(&self, c: usize) -> usize {
        c * self.plane() + PAD_TAIL
    }
    /// Length of the scratch a [`Direct3::conv`] to `c` channels needs.
    pub(super) fn scratch_len(&self, c: usize) -> usize {
        c.div_ceil(OB) * OB * self.q_tiles()
    }

    /// Floats one sample touches besides the weights: the padded input and the output tiles.
    pub(super) fn working_set(&self) -> usize {
        self.padded_len(self.c_in) + self.scratch_len(self.c_out)
    }

    /// Writes `x` (`[c, h, w]`) into `xp` in the zero-padded layout; `xp` has
    /// [`Direct3::padded_len`]`(c)` entries, all written.
    pub(super) fn pad(&self, x: &[f32], c: usize, xp: &mut [f32]) {
        let (h, w, wp) = (self.h, self.w, self.wp());
        let (planes, tail) = xp[..self.padded_len(c)].split_at_mut(c * self.plane());
        tail.fill(0.0);
        // Each entry written once: the top and bottom padding rows, each row's two padding
        // columns, and the values.
        for (src, dst) in x[..c * h * w]
            .chunks_exact(h * w)
            .zip(planes.chunks_exact_mut(self.plane()))
        {
            dst[..wp].fill(0.0);
            dst[(h + 1) * wp..].fill(0.0);
            for (row, out) in src.chunks_exact(w).zip(dst[wp..].chunks_exact_mut(wp)) {
                out[0] = 0.0;
                out[1..=w].copy_from_slice(row);
                out[w + 1] = 0.0;
            }
        }
    }

    /// Zeroes every entry of the padded layout `xp` (`c` channels, [`Direct3::padded_len`])
    /// that is not a value, after each plane's positions `q` (`0..`[`Direct3::q`]) were
    /// written at `plane * ci + (w + 2) + 1 + q`: the two dropped positions of each row then
    /// fall on the padding columns, and this restores them, the top and bottom rows and the
    /// tail. The result is what [`Direct3::pad`] makes of the values.
    pub(super) fn zero_borders(&self, xp: &mut [f32], c: usize) {
        let (h, w, wp, plane) = (self.h, self.w, self.wp(), self.plane());
        let (planes, tail) = xp[..self.padded_len(c)].split_at_mut(c * plane);
        tail.fill(0.0);
        for p in planes.chunks_exact_mut(plane) {
            p[..=wp].fill(0.0);
            for r in 1..=h {
                p[r * wp + w + 1] = 0.0;
                p[(r + 1) * wp] = 0.0;
            }
            p[(h + 1) * wp..].fill(0.0);
        }
    }

    /// The inputs of tap `i = (ci, ky, kx)` (an im2col row index, `ci * 9 + ky * 3 + kx`) for
    /// all [`Direct3::q`] flattened output positions: one contiguous run of the padded `xp`.
    /// Ternary kernels sum these runs as they sum im2col rows, without writing the columns.
    #[inline(always)]
    pub(super) fn tap<'a>(&self, xp: &'a [f32], i: u32) -> &'a [f32] {
        let i = i as usize;
        let (ci, ky, kx) = (i / 9, i / 3 % 3, i % 3);
        let start = ci * self.plane() + ky * self.wp() + kx;
        &xp[start..start + self.q()]
    }

    /// Copies `c` channels of flattened outputs (channel `co` at `src[co * stride..]`, rows of
    /// `w + 2` of which the last two are dropped) into `y` (`[c, h, w]`).
    pub(super) fn compact(&self, src: &[f32], stride: usize, c: usize, y: &mut [f32]) {
        let (h, w, wp) = (self.h, self.w, self.wp());
        for (co, plane_y) in y[..c * h * w].chunks_exact_mut(h * w).enumerate() {
            let src = &src[co * stride..];
            for (r, row) in plane_y.chunks_exact_mut(w).enumerate() {
                row.copy_from_slice(&src[r * wp..r * wp + w]);
            }
        }
    }

    /// Packs the weights `[c_out, c_in * 9]` for [`Direct3::conv`] from `c_in` to `c_out`.
    pub(super) fn pack_forward(&self, weights: &[f32]) -> Vec<f32> {
        let k = self.c_in * 9;
        pack(self.c_out, k, |o, i| weights[o * k + i])
    }

    /// [`Direct3::pack_forward`] without a map size (the packing does not depend on it), for
    /// callers that pack once and run many samples; `None` on a CPU without the kernel.
    pub(super) fn pack_weights(c_in: usize, c_out: usize, weights: &[f32]) -> Option<Vec<f32>> {
        V3::try_new()?;
        let k = c_in * 9;
        (weights.len() == c_out * k).then(|| pack(c_out, k, |o, i| weights[o * k + i]))
    }

    /// Length of [`Direct3::pack_forward`]'s result.
    pub(super) fn packed_len(&self) -> usize {
        self.c_out.div_ceil(OB) * OB * self.c_in * 9
    }

    /// Packs the weights `[c_out, c_in * 9]` for the input gradient, a [`Direct3::conv`] from
    /// `c_out` to `c_in` channels: `Wt[c][(o, ky, kx)] = W[o][(c, 2 - ky, 2 - kx)]`.
    pub(super) fn pack_input_grad(&self, weights: &[f32]) -> Vec<f32> {
        let k = self.c_in * 9;
        pack(self.c_in, self.c_out * 9, |c, i| {
            let (o, ky, kx) = (i / 9, i / 3 % 3, i % 3);
            weights[o * k + c * 9 + (2 - ky) * 3 + (2 - kx)]
        })
    }

    /// `y[co, oh, ow] = sum_{ci, ky, kx} Wp[co][(ci, ky, kx)] * xp[ci, oh + ky, ow + kx]`, from
    /// the padded `ci_n` channels `xp` with `packed` ([`Direct3::pack_forward`] for
    /// `ci_n = c_in`, `co_n = c_out`; [`Direct3::pack_input_grad`] for the reverse) into `y`
    /// (`[co_n, h, w]`), through `scratch` ([`Direct3::scratch_len`]`(co_n)`).
    pub(super) fn conv(
        &self,
        packed: &[f32],
        ci_n: usize,
        co_n: usize,
        xp: &[f32],
        scratch: &mut [f32],
        y: &mut [f32],
    ) {
        let (plane, wp, qt) = (self.plane(), self.wp(), self.q_tiles());
        let k = ci_n * 9;
        assert!(xp.len() >= self.padded_len(ci_n) && packed.len() >= co_n.div_ceil(OB) * OB * k);
        let scratch = &mut scratch[..self.scratch_len(co_n)];
        self.simd.vectorize(
            #[inline(always)]
            || {
                let simd = self.simd;
                for (ob, out) in scratch.chunks_exact_mut(OB * qt).enumerate() {
                    let wb = &packed[ob * OB * k..(ob + 1) * OB * k];
                    for q0 in (0..qt).step_by(L) {
                        let mut acc = [[simd.splat_f32x8(0.0); L / 8]; OB];
                        for ci in 0..ci_n {
                            let base = ci * plane + q0;
                            let wc: &[f32; 9 * OB] =
                                wb[ci * 9 * OB..(ci + 1) * 9 * OB].try_into().unwrap();
                            for ky in 0..3 {
                                let row: &[f32; L + 2] = xp[base + ky * wp..base + ky * wp + L + 2]
                                    .try_into()
                                    .unwrap();
                                for kx in 0..3 {
                                    let xs: [f32x8; L / 8] =
                                        std::array::from_fn(|v| load(&row[kx + 8 * v..]));
                                    for (j, a) in acc.iter_mut().enumerate() {
                                        let wv = simd.splat_f32x8(wc[(ky * 3 + kx) * OB + j]);
                                        for (a, &xv) in a.iter_mut().zip(&xs) {
                                            *a = simd.mul_add_f32x8(wv, xv, *a);
                                        }
                                    }
                                }
                            }
                        }
                        for (j, a) in acc.iter().enumerate() {
                            for (v, a) in a.iter().enumerate() {
                                let at = j * qt + q0 + 8 * v;
                                out[at..at + 8].copy_from_slice(&cast::<f32x8, [f32; 8]>(*a));
                            }
                        }
                    }
                }
            },
        );
        self.compact(scratch, qt, co_n, y);
    }

    /// `gw[o][(c, ky, kx)] += sum_{oh, ow} gp[o, oh + 1, ow + 1] * xp[c, oh + ky, ow + kx]`:
    /// the weight gradient of one sample, from its padded output gradient `gp` (`c_out`
    /// channels) and padded input `xp` (`c_in` channels), added into `gw` (`[c_out, c_in * 9]`).
    pub(super) fn weight_grad(&self, gp: &[f32], xp: &[f32], gw: &mut [f32]) {
        let qv = self.q().div_ceil(8) * 8;
        let k = self.c_in * 9;
        assert!(gp.len() >= self.padded_len(self.c_out) && xp.len() >= self.padded_len(self.c_in));
        assert!(gw.len() >= self.c_out * k);
        pulp::Simd::vectorize(
            self.simd,
            WeightGrad {
                d: self,
                gp,
                xp,
                gw,
                qv,
            },
        );
    }

    #[inline(always)]
    fn weight_grad_tiles(&self, gp: &[f32], xp: &[f32], gw: &mut [f32], qv: usize) {
        let (simd, plane, wp, k) = (self.simd, self.plane(), self.wp(), self.c_in * 9);
        for ob in 0..self.c_out.div_ceil(OW) {
            // The output gradient at flattened position q is gp[o * plane + wp + 1 + q]: zero
            // at the dropped positions (the padding columns) and past the end. Channels past
            // `c_out` in the last tile repeat its first one, and their sums are dropped.
            let g: [&[f32]; OW] = std::array::from_fn(|j| {
                let o = if ob * OW + j < self.c_out {
                    ob * OW + j
                } else {
                    ob * OW
                };
                &gp[o * plane + wp + 1..][..qv]
            });
            for ci in 0..self.c_in {
                for ky in 0..3 {
                    let taps = &xp[ci * plane + ky * wp..][..qv + 2];
                    let x: [&[f32]; 3] = std::array::from_fn(|kx| &taps[kx..kx + qv]);
                    let mut acc = [[simd.splat_f32x8(0.0); 3]; OW];
                    let chunks = g[0]
                        .chunks_exact(8)
                        .zip(g[1].chunks_exact(8))
                        .zip(g[2].chunks_exact(8))
                        .zip(x[0].chunks_exact(8))
                        .zip(x[1].chunks_exact(8))
                        .zip(x[2].chunks_exact(8));
                    for (((((g0, g1), g2), x0), x1), x2) in chunks {
                        let xs = [load(x0), load(x1), load(x2)];
                        for (a, gj) in acc.iter_mut().zip([g0, g1, g2]) {
                            let gv = load(gj);
                            for (a, &xv) in a.iter_mut().zip(&xs) {
                                *a = simd.mul_add_f32x8(gv, xv, *a);
                            }
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        let o = ob * OW + j;
                        if o >= self.c_out {
                            break;
                        }
                        for (kx, lanes) in a.iter().enumerate() {
                            let lanes = cast::<f32x8, [f32; 8]>(*lanes);
                            gw[o * k + (ci * 3 + ky) * 3 + kx] += lanes.iter().sum::<f32>();
                        }
                    }
                }
            }
        }
    }
}

/// [`Direct3::weight_grad`]'s arguments, run through `pulp`'s `WithSimd` so that the tiles
/// compile with AVX2 and FMA. (A closure of at most 8 words passed to `vectorize` went through
/// a `call_once` shim that was not inlined, so its loops compiled for baseline x86-64 and ran
/// 15x slower.)
struct WeightGrad<'a> {
    d: &'a Direct3,
    gp: &'a [f32],
    xp: &'a [f32],
    gw: &'a mut [f32],
    qv: usize,
}

impl pulp::WithSimd for WeightGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.d.weight_grad_tiles(self.gp, self.xp, self.gw, self.qv)
    }
}

/// The first 8 values of `s` as a vector.
#[inline(always)]
fn load(s: &[f32]) -> f32x8 {
    let a: [f32; 8] = s[..8].try_into().expect("8 values");
    cast(a)
}

/// `rows x k` values `f(r, i)` packed as `[rows / OB][k][OB]` (rows padded with zeros).
fn pack(rows: usize, k: usize, f: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let blocks = rows.div_ceil(OB);
    let mut out = vec![0.0f32; blocks * OB * k];
    for (b, block) in out.chunks_exact_mut(OB * k).enumerate() {
        for (i, tap) in block.chunks_exact_mut(OB).enumerate() {
            for (j, v) in tap.iter_mut().enumerate() {
                let r = b * OB + j;
                if r < rows {
                    *v = f(r, i);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
