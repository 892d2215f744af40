//! The fused optimizer step: SGDW / SGD(+L2) with (Nesterov) momentum in one parallel pass that
//! updates the parameter in place and the velocity (a host buffer) alongside, instead of the
//! reference's eight tensor ops. The arithmetic is the reference's
//! ([`crate::ops::reference::sgd_step`]) operation for operation, in f32, so both paths give
//! the same numbers.

use crate::Result;
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

/// Hyper-parameters of one step, already scaled by the schedule.
#[derive(Clone, Copy, Debug)]
pub struct StepParams {
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Decoupled weight decay (SGDW).
    pub wd: f64,
    /// L2 term added to the gradient (SGD).
    pub l2: f64,
}

/// Elements per parallel task (the update is element-wise, so the split cannot change results).
const CHUNK: usize = super::ELEMENTWISE_CHUNK;

/// The update of one element, as the reference computes it:
///
/// ```text
/// g' = g + l2 p;  lr_g = lr g';  v <- m v - lr_g;
/// p <- p + (nesterov ? m v - lr_g : v) - wd p
/// ```
///
/// (`x * a + 0.0` mirrors candle's `affine(a, 0)`.)
#[inline(always)]
fn update(p: &mut f32, v: &mut f32, g: f32, c: &Consts) {
    let old = *p;
    let g = if c.use_l2 { g + (old * c.l2 + 0.0) } else { g };
    let lr_g = g * c.lr + 0.0;
    *v = (*v * c.m + 0.0) - lr_g;
    let delta = if c.nesterov {
        (*v * c.m + 0.0) - lr_g
    } else {
        *v
    };
    let new = old + delta;
    *p = if c.use_wd {
        new - (old * c.wd + 0.0)
    } else {
        new
    };
}

#[derive(Clone, Copy)]
struct Consts {
    lr: f32,
    m: f32,
    wd: f32,
    l2: f32,
    use_l2: bool,
    use_wd: bool,
    nesterov: bool,
}

/// The in-place op on the parameter; the velocity rides along in a `RefCell`.
struct Step<'a> {
    consts: Consts,
    velocity: RefCell<&'a mut [f32]>,
}

impl InplaceOp2 for Step<'_> {
    fn name(&self) -> &'static str {
        "supermask-sgd-step"
    }
    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        lp: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let msg = |m: &str| candle_core::Error::Msg(format!("fused optimizer: {m}"));
        let (pa, pb) = lp
            .contiguous_offsets()
            .ok_or_else(|| msg("non-contiguous"))?;
        let (ga, gb) = lg
            .contiguous_offsets()
            .ok_or_else(|| msg("non-contiguous"))?;
        let CpuStorage::F32(p) = p else {
            return Err(msg("f32 only"));
        };
        let (p, g) = (&mut p[pa..pb], &g.as_slice::<f32>()?[ga..gb]);
        let mut v = self.velocity.borrow_mut();
        if p.len() != g.len() || p.len() != v.len() {
            return Err(msg("parameter, gradient and velocity sizes differ"));
        }
        let c = self.consts;
        p.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((p, v), g)| {
                super::vectorized(
                    #[inline(always)]
                    || {
                        for ((p, v), g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                            update(p, v, *g, &c);
                        }
                    },
                )
            });
        Ok(())
    }
}

/// One step for a CPU f32 parameter `p` with gradient `g`, updating `p` in place and the
/// velocity `v` (zeros before the first step, which gives the reference's `-lr g`).
pub fn sgdw_step(p: &Tensor, g: &Tensor, v: &mut [f32], h: &StepParams) -> Result<()> {
    let g = g.contiguous()?;
    let consts = Consts {
        lr: h.lr as f32,
        m: h.momentum as f32,
        wd: h.wd as f32,
        l2: h.l2 as f32,
        use_l2: h.l2 != 0.0,
        use_wd: h.wd != 0.0,
        nesterov: h.nesterov,
    };
    p.inplace_op2(
        &g,
        &Step {
            consts,
            velocity: RefCell::new(v),
        },
    )?;
    Ok(())
}
