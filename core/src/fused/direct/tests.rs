//! The direct kernel against the convolution's definition, computed in f64.

use super::Direct3;

/// (c_in, c_out, h, w): CIFAR ResNet stages, Fashion-MNIST's 28/14/7, channel counts that are
/// not multiples of the tile, and non-square maps.
const CASES: [(usize, usize, usize, usize); 8] = [
    (16, 16, 32, 32),
    (3, 16, 32, 32),
    (32, 32, 14, 14),
    (64, 64, 7, 7),
    (5, 7, 9, 6),
    (1, 3, 28, 28),
    (6, 9, 5, 11),
    (2, 1, 1, 8),
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    crate::rng::spread_values(n, seed, -0.5, 0.5)
}

/// `x[c, r, col]` with zero outside the map.
fn at(x: &[f32], h: usize, w: usize, c: usize, r: isize, col: isize) -> f64 {
    if r < 0 || col < 0 || r >= h as isize || col >= w as isize {
        0.0
    } else {
        f64::from(x[(c * h + r as usize) * w + col as usize])
    }
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs().max(1.0);
        assert!((f64::from(g) - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

/// Forward, input gradient and weight gradient of each case against
/// `y[o, r, c] = sum W[o, i, ky, kx] x[i, r + ky - 1, c + kx - 1]` and its two adjoints.
#[test]
fn direct_conv_equals_its_definition() {
    for (n, &(ci, co, h, w)) in CASES.iter().enumerate() {
        let d = Direct3::new(ci, co, h, w, 3, 1, 1).expect("applies");
        let x = values(ci * h * w, 3 * n as u64 + 1);
        let wt = values(co * ci * 9, 3 * n as u64 + 2);
        let gy = values(co * h * w, 3 * n as u64 + 3);
        let weight = |o: usize, i: usize, ky: usize, kx: usize| {
            f64::from(wt[o * ci * 9 + i * 9 + ky * 3 + kx])
        };

        let mut xp = vec![f32::NAN; d.padded_len(ci)];
        d.pad(&x, ci, &mut xp);
        let mut gp = vec![f32::NAN; d.padded_len(co)];
        d.pad(&gy, co, &mut gp);
        let mut scratch = vec![f32::NAN; d.scratch_len(co.max(ci))];

        let mut y = vec![f32::NAN; co * h * w];
        d.conv(&d.pack_forward(&wt), ci, co, &xp, &mut scratch, &mut y);
        let mut want = vec![0.0f64; co * h * w];
        let mut gx_want = vec![0.0f64; ci * h * w];
        let mut gw_want = vec![0.0f64; co * ci * 9];
        for o in 0..co {
            for r in 0..h {
                for c in 0..w {
                    let g = f64::from(gy[(o * h + r) * w + c]);
                    for i in 0..ci {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (rr, cc) =
                                    (r as isize + ky as isize - 1, c as isize + kx as isize - 1);
                                let xv = at(&x, h, w, i, rr, cc);
                                want[(o * h + r) * w + c] += weight(o, i, ky, kx) * xv;
                                gw_want[o * ci * 9 + i * 9 + ky * 3 + kx] += g * xv;
                                if rr >= 0 && cc >= 0 && rr < h as isize && cc < w as isize {
                                    let (rr, cc) = (rr as usize, cc as usize);
                                    gx_want[(i * h + rr) * w + cc] += weight(o, i, ky, kx) * g;
                                }
                            }
                        }
                    }
                }
            }
        }
        close(&y, &want, &format!("case {n} forward"));

        let mut gx = vec![f32::NAN; ci * h * w];
        d.conv(&d.pack_input_grad(&wt), co, ci, &gp, &mut scratch, &mut gx);
        close(&gx, &gx_want, &format!("case {n} input gradient"));

        let base = values(co * ci * 9, 99);
        let mut gw = base.clone();
        d.weight_grad(&gp, &xp, &mut gw);
        let gw_want: Vec<f64> = gw_want
            .iter()
            .zip(&base)
            .map(|(g, &b)| g + f64::from(b))
            .collect();
        close(&gw, &gw_want, &format!("case {n} weight gradient (added)"));
    }
}

/// Shapes the kernel does not take: other kernel sizes, strides, paddings, and rows under 6.
#[test]
fn direct_conv_declines_other_geometries() {
    assert!(Direct3::new(4, 4, 8, 8, 1, 1, 0).is_none());
    assert!(Direct3::new(4, 4, 8, 8, 3, 2, 1).is_none());
    assert!(Direct3::new(4, 4, 8, 8, 3, 1, 0).is_none());
    assert!(Direct3::new(4, 4, 8, 5, 3, 1, 1).is_none());
    assert!(Direct3::new(4, 4, 8, 6, 3, 1, 1).is_some() || pulp::x86::V3::try_new().is_none());
}
