//! `augment_pad_crop_flip`: determinism, flips, zero padding and crop geometry.

use supermask_datasets::augment_pad_crop_flip;

const N: usize = 64;
const C: usize = 3;
const H: usize = 32;
const W: usize = 32;
const IMG: usize = C * H * W;

/// Distinct non-zero values that encode (image, channel, y, x).
fn batch() -> Vec<f32> {
    (0..N * IMG).map(|i| (i + 1) as f32).collect()
}

fn at(b: &[f32], i: usize, ch: usize, y: usize, x: usize) -> f32 {
    b[i * IMG + ch * H * W + y * W + x]
}

/// Decodes a value of [`batch`] back into (image, channel, y, x).
fn decode(v: f32) -> (usize, usize, usize, usize) {
    let k = v as usize - 1;
    (k / IMG, (k % IMG) / (H * W), (k % (H * W)) / W, k % W)
}

fn augmented(pad: usize, seed: u64) -> Vec<f32> {
    let mut b = batch();
    augment_pad_crop_flip(&mut b, N, C, H, W, pad, seed);
    b
}

#[test]
fn augment_is_deterministic_for_a_seed() {
    for pad in [0, 4] {
        assert_eq!(augmented(pad, 42), augmented(pad, 42));
    }
}

#[test]
fn augment_different_seeds_differ() {
    for pad in [0, 4] {
        assert_ne!(augmented(pad, 1), augmented(pad, 2), "pad {pad}");
    }
}

#[test]
fn augment_pad0_is_only_flips_mapping_column_x_to_w_minus_1_minus_x() {
    let orig = batch();
    let out = augmented(0, 7);
    let (mut same, mut mirrored) = (0, 0);
    for i in 0..N {
        let img = &out[i * IMG..(i + 1) * IMG];
        let is_same = img == &orig[i * IMG..(i + 1) * IMG];
        let is_mirror = (0..C).all(|ch| {
            (0..H).all(|y| (0..W).all(|x| at(&out, i, ch, y, x) == at(&orig, i, ch, y, W - 1 - x)))
        });
        assert!(
            is_same || is_mirror,
            "image {i} is neither original nor mirror"
        );
        same += usize::from(is_same);
        mirrored += usize::from(is_mirror);
    }
    assert!(
        same > 0 && mirrored > 0,
        "both cases occur: {same} same, {mirrored} mirrored"
    );
}

#[test]
fn augment_pad4_pixels_are_zero_or_input_pixels_of_the_same_image_and_channel() {
    let out = augmented(4, 11);
    let mut zeros = 0;
    for i in 0..N {
        for ch in 0..C {
            for y in 0..H {
                for x in 0..W {
                    let v = at(&out, i, ch, y, x);
                    if v == 0.0 {
                        zeros += 1;
                        continue;
                    }
                    assert_eq!(v.fract(), 0.0, "{v} is not an input value");
                    assert!(
                        v >= 1.0 && v <= (N * IMG) as f32,
                        "{v} is not an input value"
                    );
                    let (si, sch, _, _) = decode(v);
                    assert_eq!((si, sch), (i, ch), "pixel ({i},{ch},{y},{x}) = {v}");
                }
            }
        }
    }
    assert!(zeros > 0, "some padding is visible in 64 random crops");
}

#[test]
fn augment_pad4_is_a_shifted_crop_of_the_padded_image_possibly_mirrored() {
    let pad = 4usize;
    let orig = batch();
    let out = augmented(pad, 3);
    let mut offsets = std::collections::HashSet::new();
    let mut flips = 0;
    for i in 0..N {
        // Find (dy, dx, flip) in the 9x9x2 possibilities that reproduces the image exactly.
        let mut found = None;
        'search: for flip in [false, true] {
            for dy in 0..=2 * pad {
                for dx in 0..=2 * pad {
                    let ok = (0..C).all(|ch| {
                        (0..H).all(|y| {
                            (0..W).all(|x| {
                                let cx = if flip { W - 1 - x } else { x };
                                let (py, px) = (y + dy, cx + dx);
                                let want = if py < pad || py >= H + pad || px < pad || px >= W + pad
                                {
                                    0.0
                                } else {
                                    at(&orig, i, ch, py - pad, px - pad)
                                };
                                at(&out, i, ch, y, x) == want
                            })
                        })
                    });
                    if ok {
                        found = Some((dy, dx, flip));
                        break 'search;
                    }
                }
            }
        }
        let (dy, dx, flip) = found.unwrap_or_else(|| panic!("image {i} is not a padded crop"));
        offsets.insert((dy, dx));
        flips += usize::from(flip);
    }
    assert!(offsets.len() > 10, "crop offsets vary: {offsets:?}");
    assert!(
        flips > 0 && flips < N,
        "some but not all images flipped: {flips}"
    );
}

#[test]
fn augment_depends_on_the_sample_position_not_its_content() {
    // Two identical images at different positions get (almost surely) different crops, and an
    // image's augmentation does not depend on the batch size.
    let mut b = vec![1.0f32; 2 * IMG];
    b.iter_mut()
        .enumerate()
        .for_each(|(k, v)| *v = (k % IMG + 1) as f32);
    let mut one = b[..IMG].to_vec();
    augment_pad_crop_flip(&mut b, 2, C, H, W, 4, 5);
    augment_pad_crop_flip(&mut one, 1, C, H, W, 4, 5);
    assert_eq!(
        &b[..IMG],
        one.as_slice(),
        "image 0 is augmented the same in any batch size"
    );
    assert_ne!(
        &b[..IMG],
        &b[IMG..],
        "same content at positions 0 and 1 differs"
    );
}

#[test]
#[should_panic(expected = "is not 2 images of 3x32x32")]
fn augment_panics_on_a_batch_of_the_wrong_length() {
    let mut b = vec![0.0f32; IMG];
    augment_pad_crop_flip(&mut b, 2, C, H, W, 4, 0);
}
