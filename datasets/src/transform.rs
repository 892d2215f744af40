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
