//! Fused batch normalization over `[n, c, ...]`: batch statistics per channel (parallel over
//! channels), the normalization and its exact backward (gradients to the input through the
//! batch mean and variance, and to the scale and shift), and a per-channel affine map for the
//! modes that normalize with fixed statistics. Candle's composite BN (mean, centering, square,
//! mean, division, broadcasts, and their backward) makes about twenty passes over the
//! activation; these make two forward and two backward.

use super::{cpu_slice, with_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `(batch, channels, positions per channel per sample)` of an `[n, c, ...]` tensor.
pub(crate) fn geometry(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Per-channel mean and (biased) variance, two-pass like the reference.
pub(crate) fn batch_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    let count = (n * hw) as f32;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |b: usize| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            let sum: f32 = (0..n).map(|b| plane(b).iter().sum::<f32>()).sum();
            let mean = sum / count;
            let sq: f32 = (0..n)
                .map(|b| {
                    plane(b)
                        .iter()
                        .map(|v| (v - mean) * (v - mean))
                        .sum::<f32>()
                })
                .sum();
            (mean, sq / count)
        })
        .unzip()
}

fn err(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{e:#}"))
}

/// Training-mode batch norm with a learnable scale and shift: inputs `(x, gamma, beta)`.
pub(crate) struct BnTrain {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "supermask-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, cpu_slice(s3, l3)?);
        let (_, c, hw) = geometry(l1.dims());
        let mut y = super::zeros(x.len());
        y.par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw))
            .for_each(|(y, x)| {
                for ch in 0..c {
                    let (m, s, g, b) = (self.mean[ch], self.invstd[ch], gamma[ch], beta[ch]);
                    for (y, x) in y[ch * hw..(ch + 1) * hw]
                        .iter_mut()
                        .zip(&x[ch * hw..(ch + 1) * hw])
                    {
                        *y = (x - m) * s * g + b;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, hw) = geometry(x.dims());
        let count = (n * hw) as f32;
        let (gx, dgamma, dbeta) = with_f32(x, |x| {
            with_f32(gamma, |gamma| {
                with_f32(grad, |g| {
                    // Per channel: dbeta = sum g, dgamma = sum g * xhat.
                    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = (0..c)
                        .into_par_iter()
                        .map(|ch| {
                            let (m, s) = (self.mean[ch], self.invstd[ch]);
                            let (mut dg, mut db) = (0.0f32, 0.0f32);
                            for b in 0..n {
                                let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                                for (x, g) in x[r.clone()].iter().zip(&g[r]) {
                                    dg += g * (x - m) * s;
                                    db += g;
                                }
                            }
                            (dg, db)
                        })
                        .unzip();
                    // dx = gamma * invstd * (g - dbeta / N - xhat * dgamma / N).
                    let mut gx = super::zeros(x.len());
                    gx.par_chunks_mut(c * hw)
                        .zip(x.par_chunks(c * hw).zip(g.par_chunks(c * hw)))
                        .for_each(|(gx, (x, g))| {
                            for ch in 0..c {
                                let (m, s) = (self.mean[ch], self.invstd[ch]);
                                let k = gamma[ch] * s;
                                let (mb, mg) = (dbeta[ch] / count, dgamma[ch] / count);
                                let r = ch * hw..(ch + 1) * hw;
                                for ((gx, x), g) in
                                    gx[r.clone()].iter_mut().zip(&x[r.clone()]).zip(&g[r])
                                {
                                    *gx = k * (g - mb - (x - m) * s * mg);
                                }
                            }
                        });
                    (gx, dgamma, dbeta)
                })
            })
        })
        .and_then(|r| r)
        .and_then(|r| r)
        .map_err(err)?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), dev)?),
            Some(Tensor::from_vec(dbeta, beta.shape(), dev)?),
        ))
    }
}

/// `y = x * scale[c] + shift[c]` with fixed per-channel constants (normalization with fixed
/// statistics); the gradient goes to `x` only.
pub(crate) struct ChannelAffine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "supermask-channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l)?;
        let (_, c, hw) = geometry(l.dims());
        let mut y = x.to_vec();
        y.par_chunks_mut(c * hw)
            .for_each(|y| super::channel_affine_sample(y, &self.scale, &self.shift));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, c, hw) = geometry(arg.dims());
        let gx = with_f32(grad, |g| {
            let mut gx = super::zeros(g.len());
            gx.par_chunks_mut(c * hw)
                .zip(g.par_chunks(c * hw))
                .for_each(|(gx, g)| {
                    for ch in 0..c {
                        let a = self.scale[ch];
                        let r = ch * hw..(ch + 1) * hw;
                        for (gx, g) in gx[r.clone()].iter_mut().zip(&g[r]) {
                            *gx = g * a;
                        }
                    }
                });
            gx
        })
        .map_err(err)?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}
