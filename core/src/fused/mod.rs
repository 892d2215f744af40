//! Fused CPU kernels for masked (and dense) linear and convolution layers.
//!
//! The generic ("reference") path builds `W * g(M)` from candle ops, and candle's backward then
//! also computes a gradient for the frozen `W` and materializes every intermediate. The fused
//! path is one candle [`CustomOp2`] per layer, taking the input and the trainable tensor:
//!
//! - forward: `y = x * Weff^T` (linear) or the convolution with `Weff`, where `Weff = W * g(M)`
//!   is built once per forward pass ([`Effective`]) either dense (GEMM) or sparse ternary (add
//!   and subtract the kept inputs, one multiply by the layer's magnitude), chosen per layer from
//!   the mask's density;
//! - backward: only the gradients that exist: the input gradient `gy * Weff` (skipped for the
//!   data input) and the score gradient `(gy^T x) * W`, the straight-through estimator of
//!   [`crate::mask::apply`]. For a dense baseline layer the same op returns `gy^T x`.
//!
//! Convolutions use per-sample im2col + GEMM, parallel over samples; linear layers use a
//! parallel GEMM (dense) or split the batch over threads (sparse). Weight-gradient partial sums
//! are formed over fixed chunks of samples and added in order, so results do not depend on the
//! thread count. Scratch buffers (im2col columns, transposes) are per thread and reused.
//!
//! Every op here is applied through [`crate::tape`], which also records it while a training
//! step's forward pass runs, so the step can differentiate the fused trunk without candle's
//! gradient bookkeeping. Activation-sized outputs are zeroed on the kernel threads.
//!
//! This module holds kernels only: which of them run, or whether the reference does instead,
//! is decided in [`crate::ops`] (the reference path is config `train.kernels.path =
//! "reference"`, the path on CUDA, and what the tests compare the fused path against).

mod bn;
#[cfg_attr(not(target_arch = "x86_64"), path = "direct_unsupported.rs")]
mod direct;
mod effective;
mod elu;
pub mod gemm;
mod im2col;
mod layer;
mod optim;
mod pool;
mod transpose;

pub use effective::{Effective, Layout as EffLayout, Ternary, Values};
pub use layer::{
    conv_layout, conv_sample, conv_sample_into, conv_sample_layouts, max_pool2_sample,
    max_pool2_sample_into, pack_direct, FusedLayer, Geometry, SampleLayout,
};
pub use optim::{sgdw_step, StepParams};

pub use crate::cpu::with_f32;
use crate::cpu::zeros;
use crate::Result;
use candle_core::{CpuStorage, Layout, Tensor};

// The kernel settings moved to `crate::config`; re-exported from their old path.
pub use crate::config::{KernelConfig, KernelPath, DEFAULT_SPARSE_BELOW};

pub(crate) use crate::cpu::{vectorized, ELEMENTWISE_CHUNK};

/// `elu(x)` with the fused kernel (CPU f32 tensors).
pub fn elu(x: &Tensor, alpha: f64) -> Result<Tensor> {
    crate::tape::apply1(&x.contiguous()?, elu::Elu(alpha as f32))
}

/// `elu(a + b)` as one op (the values and gradients of `a + b` then [`elu`]), for CPU f32
/// tensors of one shape.
pub fn add_elu(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    crate::tape::apply2(
        &a.contiguous()?,
        &b.contiguous()?,
        elu::AddElu(alpha as f32),
    )
}

/// ELU in place on this thread (vectorized), as the fused layers compute it.
pub fn elu_in_place(v: &mut [f32], alpha: f32) {
    elu::elu_slice(v, alpha)
}

/// Max-pool of one sample `[c, h, w]` with `k x k` windows, `stride` and `-inf` padding `pad`
/// (the fused op's forward, on this thread): `([c, oh, ow], oh, ow)`.
pub fn max_pool_sample(
    z: &[f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    anyhow::ensure!(
        stride > 0 && k > 0 && h + 2 * pad >= k && w + 2 * pad >= k && z.len() == c * h * w,
        "max-pool {k}x{k}: input of {} values is not [{c}, {h}, {w}] of at least the window",
        z.len()
    );
    let pool = pool::MaxPool { k, stride, pad };
    let (oh, ow) = pool.out_dims(h, w);
    let mut out = vec![0.0f32; c * oh * ow];
    for (plane, o) in z.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        pool.plane(plane, h, w, o);
    }
    Ok((out, oh, ow))
}

/// `x * scale[ch] + shift[ch]` in place for one sample `[c, hw]` (batch norm with fixed
/// statistics; the fused op runs it per sample).
pub fn channel_affine_sample(x: &mut [f32], scale: &[f32], shift: &[f32]) {
    assert!(
        !scale.is_empty() && scale.len() == shift.len() && x.len().is_multiple_of(scale.len()),
        "channel affine: {} values for {} channels",
        x.len(),
        scale.len()
    );
    let hw = x.len() / scale.len();
    for (ch, plane) in x.chunks_exact_mut(hw.max(1)).enumerate() {
        let (a, b) = (scale[ch], shift[ch]);
        for v in plane {
            *v = *v * a + b;
        }
    }
}

pub use transpose::transpose_block;

/// Batch statistics `(mean, biased variance)` per channel of an `[n, c, ...]` CPU f32 tensor.
pub fn batch_stats(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, c, hw) = bn::geometry(x.dims());
    with_f32(x, |v| bn::batch_stats(v, n, c, hw))
}

/// Training-mode batch norm `(x - mean) / sqrt(var + eps) * gamma + beta` with the given batch
/// statistics, differentiable in `x` (through the statistics), `gamma` and `beta`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: Vec<f32>,
    var: &[f32],
    eps: f64,
) -> Result<Tensor> {
    let invstd = var.iter().map(|v| 1.0 / (v + eps as f32).sqrt()).collect();
    let op = bn::BnTrain { mean, invstd };
    crate::tape::apply3(
        &x.contiguous()?,
        &gamma.contiguous()?,
        &beta.contiguous()?,
        op,
    )
}

/// `x * scale[c] + shift[c]` per channel of an `[n, c, ...]` tensor (gradient to `x` only).
pub fn channel_affine(x: &Tensor, scale: Vec<f32>, shift: Vec<f32>) -> Result<Tensor> {
    crate::tape::apply1(&x.contiguous()?, bn::ChannelAffine { scale, shift })
}

/// Max-pooling of `[n, c, h, w]` with `k x k` windows, `stride` and `-inf` padding `pad`,
/// with the fused kernel (CPU f32 tensors).
pub fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    crate::tape::apply1(&x.contiguous()?, pool::MaxPool { k, stride, pad })
}

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(candle_core::Error::Msg(
            "fused kernels need contiguous inputs".into(),
        )),
    }
}
