//! `standardize_image` and `epoch_order`.

use rand::{Rng, SeedableRng};
use supermask_datasets::{epoch_order, standardize_image};

#[test]
fn standardize_random_image_has_zero_mean_unit_std() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut x: Vec<f32> = (0..784).map(|_| f32::from(rng.random::<u8>())).collect();
    standardize_image(&mut x);
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    assert!(mean.abs() < 1e-5, "mean {mean}");
    assert!((std - 1.0).abs() < 1e-5, "std {std}");
}

#[test]
fn standardize_constant_image_uses_floor_and_gives_zeros() {
    let mut x = vec![42.0f32; 784];
    standardize_image(&mut x);
    assert!(x.iter().all(|&v| v == 0.0));
}

#[test]
fn standardize_low_variance_image_divides_by_inverse_sqrt_n_floor() {
    // N = 4, floor = 0.5; values +-0.1 around 0 have std 0.1 < 0.5, so result = x / 0.5.
    let mut x = vec![0.1f32, -0.1, 0.1, -0.1];
    standardize_image(&mut x);
    for (v, e) in x.iter().zip([0.2f32, -0.2, 0.2, -0.2]) {
        assert!((v - e).abs() < 1e-6, "{v} vs {e}");
    }
}

#[test]
fn standardize_empty_image_is_a_no_op() {
    let mut x: Vec<f32> = Vec::new();
    standardize_image(&mut x);
    assert!(x.is_empty());
}

#[test]
fn epoch_order_is_a_permutation() {
    let mut o = epoch_order(1000, 3, 5, true);
    o.sort_unstable();
    assert_eq!(o, (0..1000).collect::<Vec<_>>());
}

#[test]
fn epoch_order_is_deterministic_per_seed_and_epoch() {
    assert_eq!(epoch_order(500, 11, 2, true), epoch_order(500, 11, 2, true));
}

#[test]
fn epoch_order_differs_across_epochs_and_seeds() {
    let a = epoch_order(500, 11, 0, true);
    assert_ne!(a, epoch_order(500, 11, 1, true));
    assert_ne!(a, epoch_order(500, 12, 0, true));
    assert_ne!(
        a,
        (0..500).collect::<Vec<_>>(),
        "shuffled order is not the identity"
    );
}

#[test]
fn epoch_order_identity_when_not_shuffled() {
    assert_eq!(epoch_order(7, 99, 3, false), vec![0, 1, 2, 3, 4, 5, 6]);
    assert!(epoch_order(0, 1, 1, true).is_empty());
}

/// A dataset whose sample i holds the value i and label i % 10.
fn numbered(n: usize) -> supermask_datasets::Dataset {
    supermask_datasets::Dataset {
        images: (0..n).map(|i| i as f32).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        n,
        dim: 1,
        shape: vec![1, 1, 1],
        classes: 10,
    }
}

#[test]
fn hold_out_splits_into_disjoint_seeded_parts_that_cover_the_set() {
    let d = numbered(100);
    let (rest, held) = d.hold_out(30, 7).unwrap();
    assert_eq!((rest.n, held.n), (70, 30));
    let mut all: Vec<f32> = rest.images.iter().chain(&held.images).copied().collect();
    all.sort_by(f32::total_cmp);
    assert_eq!(all, d.images, "disjoint and covering");
    for part in [&rest, &held] {
        assert!(
            part.images.windows(2).all(|w| w[0] < w[1]),
            "original order"
        );
        for (x, l) in part.images.iter().zip(&part.labels) {
            assert_eq!(*l as usize, *x as usize % 10, "labels follow their images");
        }
    }
    let (_, again) = d.hold_out(30, 7).unwrap();
    assert_eq!(
        again.images, held.images,
        "the same seed holds out the same samples"
    );
    let (_, other) = d.hold_out(30, 8).unwrap();
    assert_ne!(other.images, held.images, "another seed, other samples");
    assert!(d.hold_out(0, 7).is_err() && d.hold_out(100, 7).is_err());
}
