//! The inference engine's sparse convolution over the padded input's taps
//! (`fused::conv_sample` with a sparse effective weight on a 3x3 "same" layer) gives the same
//! bits as the sparse kernel over an im2col column matrix, which it replaces: each output sums
//! the same kept inputs in the same order, and the padding zeros are im2col's margins.
//! Also where the automatic layout switch sends such a layer to the sparse kernels, and that
//! the engine's per-sample layouts (a convolution writing the next one's padded input, or the
//! wide rows a max-pool reads) give the dense layout's bits.

use supermask_core::fused::{
    conv_layout, conv_sample, conv_sample_into, conv_sample_layouts, max_pool2_sample,
    max_pool2_sample_into, pack_direct, EffLayout, Effective, SampleLayout,
};
use supermask_core::rng::spread_values;

/// `[c * 9, h * w]` columns of a 3x3, stride-1, pad-1 convolution of `x` (`[c, h, w]`), by
/// the definition (zero outside the image).
fn im2col(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut cols = vec![0.0f32; c * 9 * h * w];
    for ci in 0..c {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = (ci * 9 + ky * 3 + kx) * h * w;
                for oy in 0..h {
                    for ox in 0..w {
                        let (iy, ix) = (oy + ky, ox + kx);
                        if (1..=h).contains(&iy) && (1..=w).contains(&ix) {
                            cols[row + oy * w + ox] = x[ci * h * w + (iy - 1) * w + ix - 1];
                        }
                    }
                }
            }
        }
    }
    cols
}

/// A ternary mask keeping `share` of `n` entries with random signs.
fn ternary_mask(n: usize, share: f32, seed: u64) -> Vec<f32> {
    spread_values(n, seed, 0.0, 1.0)
        .iter()
        .map(|&u| match u {
            u if u < share / 2.0 => -1.0,
            u if u < share => 1.0,
            _ => 0.0,
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

/// Conv (taps) -> conv -> 2x2 max-pool, as the engine runs Conv2: the first convolution
/// writing the second's padded input, and the second writing wide rows for the pool, give the
/// bits of the dense layout throughout, for a sparse (taps) and a dense (direct kernel) second
/// layer; buffers reused with stale values change nothing. A padded output whose borders were
/// not zeroed, or a pool that read wide rows as dense ones, fails this.
#[test]
fn padded_and_wide_sample_layouts_give_the_dense_layouts_bits() {
    let (c0, c1, c2, h, w) = (3, 24, 16, 12, 10);
    let x = spread_values(c0 * h * w, 5, -2.0, 2.0);
    let first = Effective::build(
        &vec![0.37f32; c1 * c0 * 9],
        &ternary_mask(c1 * c0 * 9, 0.05, 6),
        c1,
        c0 * 9,
        Some(0.37),
        EffLayout::Sparse,
    );
    assert_eq!(
        conv_sample_layouts(&first, c0, [h, w], 3, 1, 1),
        (true, true)
    );
    for (share, layout) in [(0.05, EffLayout::Sparse), (0.5, EffLayout::Dense)] {
        let second = Effective::build(
            &spread_values(c2 * c1 * 9, 8, -1.0, 1.0),
            &ternary_mask(c2 * c1 * 9, share, 7),
            c2,
            c1 * 9,
            None,
            layout,
        );
        let (reads_padded, writes_wide) = conv_sample_layouts(&second, c1, [h, w], 3, 1, 1);
        if !reads_padded {
            // No AVX2 and FMA: no direct kernel, nothing to compare.
            continue;
        }
        // Dense throughout.
        let (y1, ..) = conv_sample(&first, c0, h, w, 3, 1, 1, &x).unwrap();
        let (y2, ..) = conv_sample(&second, c1, h, w, 3, 1, 1, &y1).unwrap();
        let want = max_pool2_sample(&y2, c2, h, w);
        // Padded between the convolutions, wide into the pool (when the second writes it),
        // into buffers holding stale values.
        let mut p1 = vec![f32::NAN; 100_000];
        conv_sample_into(
            (&first, None),
            [c0, h, w],
            [3, 1, 1],
            (&x, SampleLayout::Dense),
            (&mut p1, SampleLayout::Padded),
        )
        .unwrap();
        assert_eq!(p1.len(), SampleLayout::Padded.len(c1, h, w));
        let y2_layout = if writes_wide {
            SampleLayout::Wide
        } else {
            SampleLayout::Dense
        };
        let mut p2 = vec![f32::NAN; 100_000];
        // The dense layer with its weights packed once (the engine's way), the sparse without.
        let packed = pack_direct(&second, c1, 3, 1, 1);
        assert_eq!(packed.is_some(), layout == EffLayout::Dense);
        conv_sample_into(
            (&second, packed.as_deref()),
            [c1, h, w],
            [3, 1, 1],
            (&p1, SampleLayout::Padded),
            (&mut p2, y2_layout),
        )
        .unwrap();
        let mut got = vec![f32::NAN; 3];
        max_pool2_sample_into((&p2, y2_layout), [c2, h, w], &mut got);
        assert_eq!(
            bits(&got),
            bits(&want),
            "second layer {layout:?} at {share}"
        );
        assert!(want.iter().any(|&v| v != 0.0));
    }
}

#[test]
fn sparse_taps_conv_equals_the_im2col_sparse_kernel_bitwise() {
    // (c_in, c_out, h, w, kept share): Conv2's first layer, a 64-channel layer at 2%, maps
    // down to the narrowest row the tap geometry takes (w = 6), non-square, and an odd
    // channel count.
    let cases = [
        (3, 64, 32, 32, 0.02),
        (64, 64, 32, 32, 0.02),
        (16, 8, 7, 6, 0.1),
        (5, 3, 9, 13, 0.3),
        (1, 1, 6, 6, 0.5),
    ];
    for (n, &(c_in, c_out, h, w, share)) in cases.iter().enumerate() {
        let seed = 70 + n as u64;
        let cols_n = c_in * 9;
        let x = spread_values(c_in * h * w, seed, -2.0, 2.0);
        let r = spread_values(c_out * cols_n, seed + 1, 0.0, 1.0);
        // A ternary mask keeping `share` of the entries with random signs.
        let mask: Vec<f32> = r
            .iter()
            .map(|&u| match u {
                u if u < share / 2.0 => -1.0,
                u if u < share => 1.0,
                _ => 0.0,
            })
            .collect();
        let varied = spread_values(c_out * cols_n, seed + 2, 0.1, 1.0);
        let constant = vec![0.37f32; c_out * cols_n];
        // Signed-constant weights (kept entries stored as signs) and varied ones.
        for (weight, magnitude) in [(&constant, Some(0.37f32)), (&varied, None)] {
            let eff = Effective::build(weight, &mask, c_out, cols_n, magnitude, EffLayout::Sparse);
            assert!(
                eff.is_sparse(),
                "case {n}: the layout was asked to be sparse"
            );
            let (y, oh, ow) = conv_sample(&eff, c_in, h, w, 3, 1, 1, &x).unwrap();
            assert_eq!((oh, ow), (h, w));
            let mut want = vec![0.0f32; c_out * h * w];
            eff.matmul(&im2col(&x, c_in, h, w), h * w, &mut want);
            let differ = y
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                differ.is_none(),
                "case {n} ({c_in}->{c_out}, {h}x{w}, magnitude {magnitude:?}): output {} is {} \
                 by taps, {} by im2col",
                differ.unwrap(),
                y[differ.unwrap()],
                want[differ.unwrap()]
            );
            assert!(want.iter().any(|&v| v != 0.0), "case {n}: all outputs zero");
        }
    }
}

/// The automatic layout switch of a 3x3 "same" layer is raised to where the tap kernels apply
/// (a kept share below `w / (2 c_out)`, the plan's `2 kept < c_in 9 w`), at most 0.3 (the
/// dense/sparse crossover `cargo bench --bench kernels` measured for such layers); other
/// geometries and the always-dense and always-sparse layouts keep the configured switch.
#[test]
fn conv_layout_raises_the_sparse_switch_where_the_tap_kernels_apply() {
    let direct = cfg!(target_arch = "x86_64")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    let auto =
        |c_out, x, k, stride, pad| conv_layout(EffLayout::Auto(0.2), c_out, x, k, stride, pad);
    let raised = |to: f64| EffLayout::Auto(if direct { to } else { 0.2 });
    // ResNet20's layers: 16 channels on 32x32 (32 / 32 = 1, capped at 0.3), 32 on 16x16
    // (16 / 64), 64 on 8x8 (8 / 128, below the configured 0.2).
    assert_eq!(auto(16, [128, 16, 32, 32], 3, 1, 1), raised(0.3));
    assert_eq!(auto(32, [128, 32, 16, 16], 3, 1, 1), raised(0.25));
    assert_eq!(auto(64, [128, 64, 8, 8], 3, 1, 1), EffLayout::Auto(0.2));
    // Strided, 1x1 and unpadded convolutions have no tap kernel.
    assert_eq!(auto(16, [128, 16, 32, 32], 3, 2, 1), EffLayout::Auto(0.2));
    assert_eq!(auto(16, [128, 16, 32, 32], 1, 1, 0), EffLayout::Auto(0.2));
    assert_eq!(auto(16, [128, 16, 32, 32], 3, 1, 0), EffLayout::Auto(0.2));
    for fixed in [EffLayout::Dense, EffLayout::Sparse] {
        assert_eq!(conv_layout(fixed, 16, [128, 16, 32, 32], 3, 1, 1), fixed);
    }
}
