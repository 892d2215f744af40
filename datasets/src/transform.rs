//! Per-image standardization and epoch ordering.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// TensorFlow's `per_image_standardization`, in place on one image:
/// `(x - mean) / max(std, 1/sqrt(N))` with `N = x.len()` and `std` the population standard
/// deviation. Statistics are accumulated in `f64`. An empty slice is left unchanged.
pub fn standardize_image(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let adjusted_std = var.sqrt().max(1.0 / n.sqrt());
    for v in x.iter_mut() {
        *v = ((f64::from(*v) - mean) / adjusted_std) as f32;
    }
}

/// SplitMix64 finalizer, used to decorrelate the RNG seeds of successive epochs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sample order of one epoch: the identity if `!shuffle`, else a permutation of `0..n` that
/// depends only on `(seed, epoch)` (a `StdRng` seeded from a mix of both, then
/// `SliceRandom::shuffle`). Deterministic.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mixed = splitmix64(seed ^ splitmix64(epoch as u64));
        let mut rng = StdRng::seed_from_u64(mixed);
        order.shuffle(&mut rng);
    }
    order
}

/// Augmentation of the ResNet presets, in place on a batch of `n` channels-first images
/// (`n x c x h x w`, already standardized): pad `pad` zero pixels on each side, take a random
/// `h x w` crop of the padded image, then flip it horizontally with probability 1/2 (a flip
/// maps column `x` to `w - 1 - x`). All channels of an image share its crop and flip.
///
/// Deterministic: the randomness of image `i` depends only on `(seed, i)`, so callers should
/// vary `seed` per batch and epoch. With `pad == 0` only the flip remains.
///
/// # Panics
/// Panics if `batch.len() != n * c * h * w` (a programming error).
pub fn augment_pad_crop_flip(
    batch: &mut [f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    pad: usize,
    seed: u64,
) {
    let img = c * h * w;
    assert_eq!(
        batch.len(),
        n * img,
        "augment_pad_crop_flip: batch of {} values is not {n} images of {c}x{h}x{w}",
        batch.len()
    );
    if img == 0 {
        return;
    }
    let span = 2 * pad as u64 + 1;
    let mut src = vec![0f32; img];
    for (i, out) in batch.chunks_exact_mut(img).enumerate() {
        let r = splitmix64(seed ^ splitmix64(i as u64 ^ 0xA076_1D64_78BD_642F));
        // Offsets of the crop in the padded image, 0..=2*pad each, and the flip bit.
        let dy = ((r & 0xFFFF_FFFF) % span) as usize;
        let dx = (((r >> 32) & 0x7FFF_FFFF) % span) as usize;
        let flip = r >> 63 == 1;
        if dy == pad && dx == pad && !flip {
            continue;
        }
        src.copy_from_slice(out);
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            let dst = &mut out[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                // Row y of the crop is row y + dy - pad of the original.
                let sy = (y + dy).checked_sub(pad).filter(|&sy| sy < h);
                for x in 0..w {
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = (cx + dx).checked_sub(pad).filter(|&sx| sx < w);
                    dst[y * w + x] = match (sy, sx) {
                        (Some(sy), Some(sx)) => plane[sy * w + sx],
                        _ => 0.0,
                    };
                }
            }
        }
    }
}
