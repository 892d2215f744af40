//! CPU f32 tensor data for the fused kernels and the tape: read access, and zeroing and adding
//! on the kernel threads.

use crate::Result;
use candle_core::{Storage, Tensor};
use rayon::prelude::*;

/// Below this many values [`zeros`] zeroes on the calling thread.
const PAR_ZERO_MIN: usize = 1 << 16;

/// Values per element of [`zeros`]' parallel collect. For a zero fill blocks and single values
/// measured alike; for computed values a block collect ran at half a single-value collect's
/// speed (`docs/results/fcn-threads.md`), so [`add`] collects single values.
const BLOCK: usize = 16;

/// Values per parallel task of the element-wise passes over a layer's weights (the effective
/// weight, the score gradient, the optimizer step): 64 KiB of each operand, enough that a
/// task's work outweighs handing it to another thread, small enough that the FCN's first
/// layer (235,200 weights) splits over 2-16 threads.
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Runs `f` compiled for the best instruction set this CPU has (AVX2+FMA or AVX-512 when
/// present, detected at run time by `pulp`), so element-wise loops vectorize without building
/// for one CPU.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `n` zeros, written by the kernel threads for activation-sized buffers: `vec![0.0; n]`
/// zeroes reused memory on the calling thread, which the other threads then wait for.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    if n < PAR_ZERO_MIN {
        return vec![0.0; n];
    }
    // Blocks of values, so each write is a vector store, cast to one vector and cut to `n`.
    let blocks: Vec<[f32; BLOCK]> =
        rayon::iter::repeat_n([0.0f32; BLOCK], n.div_ceil(BLOCK)).collect();
    let mut v: Vec<f32> = bytemuck::cast_vec(blocks);
    v.truncate(n);
    v
}

/// `a + b` for CPU f32 tensors of one shape, added by the kernel threads (candle's CPU add runs
/// on the calling thread); other tensors go through candle's add. The same bits either way.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(cpu_f32(a) && cpu_f32(b) && a.shape() == b.shape()) {
        return Ok((a + b)?);
    }
    let sum: Vec<f32> = with_f32(a, |a| {
        with_f32(b, |b| {
            // Collected value by value: a collect of 16-value blocks, which should store
            // with vectors, ran at half this speed (`docs/results/fcn-threads.md`).
            let mut sum = Vec::new();
            a.par_iter()
                .zip(b)
                .with_min_len(PAR_ZERO_MIN)
                .map(|(x, y)| x + y)
                .collect_into_vec(&mut sum);
            sum
        })
    })??;
    Ok(Tensor::from_vec(sum, a.shape(), a.device())?)
}

/// Calls `f` with the contiguous f32 data of a CPU tensor.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        anyhow::bail!("fused kernels need a CPU tensor");
    };
    let data = cpu.as_slice::<f32>()?;
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| anyhow::anyhow!("fused kernels need a contiguous tensor"))?;
    Ok(f(&data[a..b]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn parallel_add_and_zeros_equal_candles_bit_for_bit() {
        // Above and below the parallel size, and a shape candle's add must take (f64).
        for n in [3, PAR_ZERO_MIN + 5, 3 * PAR_ZERO_MIN] {
            let a = Tensor::randn(0f32, 1.0, (n,), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 3.0, (n,), &Device::Cpu).unwrap();
            let want: Vec<f32> = (&a + &b).unwrap().to_vec1().unwrap();
            let got: Vec<f32> = add(&a, &b).unwrap().to_vec1().unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n = {n}"
            );
            let z = zeros(n);
            assert!(
                z.len() == n && z.iter().all(|v| v.to_bits() == 0),
                "n = {n}"
            );
        }
        let a = Tensor::ones((2, 3), DType::F64, &Device::Cpu).unwrap();
        let s: Vec<Vec<f64>> = add(&a, &a).unwrap().to_vec2().unwrap();
        assert_eq!(s, vec![vec![2.0; 3]; 2]);
    }
}
