//! A generated MNIST-shaped dataset with learnable class structure, written as IDX files: for
//! tests of the framework and of plugin crates that must train end to end without real data
//! (a model that learns it reaches high accuracy in a few epochs; one that diverges does not).

use std::path::Path;

use anyhow::Result;

use crate::{write_idx_images, write_idx_labels};

/// Writes `train` training and `test` test images of 28x28 into `root/mnist/` under MNIST's
/// file names, so `data.dataset = "mnist"` with `--data root` reads them. Class `c` lights up
/// rows `2c + 2 .. 2c + 5` (pixel values 190-249) over noise (0-59); classes are drawn
/// uniformly from one seeded stream, the same for every call.
pub fn write_learnable_mnist(root: &Path, train: usize, test: usize) -> Result<()> {
    let dir = root.join("mnist");
    let mut seed = 12345u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut pixels = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let c = (next() % 10) as usize;
            labels.push(c as u8);
            for r in 0..28 {
                for _ in 0..28 {
                    let on = r >= 2 * c + 2 && r < 2 * c + 5;
                    let noise = (next() % 60) as u8;
                    pixels.push(if on { 190 + noise } else { noise });
                }
            }
        }
        let images = dir.join(format!("{prefix}-images-idx3-ubyte"));
        write_idx_images(&images, &pixels, n, 28, 28)?;
        write_idx_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &labels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_idx_images, read_idx_labels};

    /// Every image's brightest rows are its class's three rows, so the task is learnable;
    /// all ten classes occur.
    #[test]
    fn each_image_lights_its_class_rows() {
        let dir = tempfile::tempdir().unwrap();
        write_learnable_mnist(dir.path(), 200, 50).unwrap();
        let m = dir.path().join("mnist");
        let (pixels, n, h, w) = read_idx_images(&m.join("train-images-idx3-ubyte")).unwrap();
        let labels = read_idx_labels(&m.join("train-labels-idx1-ubyte")).unwrap();
        assert_eq!((n, h, w, labels.len()), (200, 28, 28, 200));
        for (img, &c) in pixels.chunks(784).zip(&labels) {
            let lit: Vec<usize> = (0..28)
                .filter(|&r| img[r * 28..(r + 1) * 28].iter().all(|&p| p >= 190))
                .collect();
            let c = c as usize;
            assert_eq!(lit, vec![2 * c + 2, 2 * c + 3, 2 * c + 4]);
        }
        let mut seen = [false; 10];
        labels.iter().for_each(|&c| seen[c as usize] = true);
        assert!(seen.iter().all(|&s| s));
        assert_eq!(
            read_idx_labels(&m.join("t10k-labels-idx1-ubyte"))
                .unwrap()
                .len(),
            50
        );
    }
}
