//! One sample through the plan's steps on this thread ([`Engine::run`]), with activation
//! buffers reused across steps and samples, and each convolution's output in the layout the
//! step after it reads in place ([`SampleLayout`]): padded for a following 3x3 "same"
//! convolution, wide for a following 2x2 max-pool, dense otherwise. An ELU in between keeps
//! either layout. The values are the same bits in every layout.

use super::Engine;
use crate::act::elu_in_place;
use crate::plan::{Conv, Op};
use anyhow::{ensure, Result};
use std::cell::RefCell;
use supermask_core::fused::{
    channel_affine_sample, conv_sample_into, conv_sample_layouts, max_pool2_sample_into,
    max_pool_sample, SampleLayout,
};

/// A per-sample activation: values, their shape (`[c, h, w]` or `[n]`) and layout.
pub(super) struct Act {
    pub v: Vec<f32>,
    shape: Vec<usize>,
    layout: SampleLayout,
}

impl Act {
    /// A dense copy of `x` (of `shape`) in a reused buffer.
    fn copy_of(x: &[f32], shape: &[usize]) -> Self {
        let mut v = buffer(x.len());
        v.clear();
        v.extend_from_slice(x);
        Act {
            v,
            shape: shape.to_vec(),
            layout: SampleLayout::Dense,
        }
    }
}

/// Buffers kept per thread for reuse: a plan holds at most three activations at once (a
/// residual block's input, main path and shortcut) besides the one being written.
const KEPT_BUFFERS: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A free buffer of this thread's for `len` values: the shortest of those with `len` to
/// `2 len` values, else a new one. Its old values stay until written over: the kernels
/// resize without zeroing what they overwrite, so a buffer of about the right length is
/// reused as it is. (Taking any buffer, each step's output grew one that a shorter output had
/// truncated, and zeroing the growth took 4% of a Conv2 inference.)
fn buffer(len: usize) -> Vec<f32> {
    FREE.with_borrow_mut(|free| {
        let fits = (0..free.len())
            .filter(|&i| (len..=2 * len).contains(&free[i].len()))
            .min_by_key(|&i| free[i].len())?;
        Some(free.swap_remove(fits))
    })
    .unwrap_or_default()
}

/// Returns `v` to this thread's buffers.
pub(super) fn recycle(v: Vec<f32>) {
    FREE.with_borrow_mut(|free| {
        if free.len() < KEPT_BUFFERS {
            free.push(v);
        }
    });
}

/// `[c, h, w]` of a dense image activation, or an error naming the step.
fn image(shape: &[usize], layout: SampleLayout, what: &str) -> Result<(usize, usize, usize)> {
    ensure!(
        layout == SampleLayout::Dense,
        "{what} got a {layout:?} activation"
    );
    match shape {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => anyhow::bail!("{what} needs an image [c, h, w], got {shape:?}"),
    }
}

/// The layout `conv`'s output (`[_, h, w]`) takes for the steps `rest` after it: what the
/// next step other than an ELU reads in place, when `conv`'s kernel can write it.
fn out_layout(conv: &Conv, [h, w]: [usize; 2], rest: &[Op]) -> SampleLayout {
    let (_, writes) =
        conv_sample_layouts(&conv.eff, conv.c_in, [h, w], conv.k, conv.stride, conv.pad);
    if !writes {
        return SampleLayout::Dense;
    }
    // A kernel that writes other layouts is a 3x3 "same" convolution: the output is h x w.
    match rest.iter().find(|op| !matches!(op, Op::Elu)) {
        Some(Op::Conv(next))
            if conv_sample_layouts(&next.eff, next.c_in, [h, w], next.k, next.stride, next.pad)
                .0 =>
        {
            SampleLayout::Padded
        }
        Some(Op::MaxPool {
            k: 2,
            stride: 2,
            pad: 0,
        }) => SampleLayout::Wide,
        _ => SampleLayout::Dense,
    }
}

impl Engine {
    /// One sample `x` of `shape` through `ops` on this thread. ELU, batch norm and flatten
    /// work in place on the activation; the first op reads `x` without copying it.
    pub(super) fn run(&self, ops: &[Op], x: &[f32], shape: &[usize]) -> Result<Act> {
        let mut cur: Option<Act> = None;
        for (i, op) in ops.iter().enumerate() {
            if matches!(op, Op::Norm { .. } | Op::Elu | Op::Flatten) {
                let a = cur.get_or_insert_with(|| Act::copy_of(x, shape));
                match op {
                    Op::Elu => elu_in_place(&mut a.v, self.alpha),
                    _ => {
                        ensure!(
                            a.layout == SampleLayout::Dense,
                            "a batch norm or flatten got a {:?} activation",
                            a.layout
                        );
                        match op {
                            Op::Norm { scale, shift } => {
                                channel_affine_sample(&mut a.v, scale, shift)
                            }
                            _ => a.shape = vec![a.v.len()],
                        }
                    }
                }
            } else {
                let next = match &cur {
                    Some(a) => self.step(op, &ops[i + 1..], (&a.v, &a.shape, a.layout))?,
                    None => self.step(op, &ops[i + 1..], (x, shape, SampleLayout::Dense))?,
                };
                if let Some(old) = cur.replace(next) {
                    recycle(old.v);
                }
            }
        }
        Ok(cur.unwrap_or_else(|| Act::copy_of(x, shape)))
    }

    /// An op that makes a new activation from `z` of `shape` in `layout`, followed by `rest`.
    fn step(
        &self,
        op: &Op,
        rest: &[Op],
        (z, shape, layout): (&[f32], &[usize], SampleLayout),
    ) -> Result<Act> {
        let dense = |v, shape| Act {
            v,
            shape,
            layout: SampleLayout::Dense,
        };
        Ok(match op {
            Op::Conv(conv) => {
                let [_, h, w] = shape[..] else {
                    anyhow::bail!("a conv needs an image [c, h, w], got {shape:?}");
                };
                let y_layout = out_layout(conv, [h, w], rest);
                let geometry = [conv.k, conv.stride, conv.pad];
                let mut y = buffer(y_layout.conv_len(conv.c_out, [h, w], geometry));
                let (oh, ow) = conv_sample_into(
                    (&conv.eff, conv.packed.as_deref()),
                    [conv.c_in, h, w],
                    geometry,
                    (z, layout),
                    (&mut y, y_layout),
                )?;
                Act {
                    v: y,
                    shape: vec![conv.c_out, oh, ow],
                    layout: y_layout,
                }
            }
            Op::MaxPool {
                k: 2,
                stride: 2,
                pad: 0,
            } => {
                let [c, h, w] = shape[..] else {
                    anyhow::bail!("a max-pool needs an image [c, h, w], got {shape:?}");
                };
                let mut y = buffer(c * (h / 2) * (w / 2));
                max_pool2_sample_into((z, layout), [c, h, w], &mut y);
                dense(y, vec![c, h / 2, w / 2])
            }
            Op::MaxPool { k, stride, pad } => {
                let (c, h, w) = image(shape, layout, "a max-pool")?;
                let (y, oh, ow) = max_pool_sample(z, c, h, w, *k, *stride, *pad)?;
                dense(y, vec![c, oh, ow])
            }
            Op::GlobalAvgPool => {
                // As the model computes it: the mean over each row, then over the rows.
                let (c, h, w) = image(shape, layout, "global average pooling")?;
                let hw = h * w;
                let mut v = buffer(c);
                v.clear();
                v.extend(z.chunks_exact(hw.max(1)).map(|plane| {
                    let rows: f32 = plane
                        .chunks_exact(w)
                        .map(|r| r.iter().sum::<f32>() / w as f32)
                        .sum();
                    rows / h as f32
                }));
                dense(v, vec![c])
            }
            Op::Residual { main, shortcut } => {
                image(shape, layout, "a residual block")?;
                let mut m = self.run(main, z, shape)?;
                let skip = if shortcut.is_empty() {
                    None
                } else {
                    Some(self.run(shortcut, z, shape)?)
                };
                let s = skip.as_ref().map_or(z, |s| &s.v[..]);
                ensure!(
                    s.len() == m.v.len() && m.layout == SampleLayout::Dense,
                    "residual and main path differ in size"
                );
                for (a, b) in m.v.iter_mut().zip(s) {
                    *a += b;
                }
                if let Some(s) = skip {
                    recycle(s.v);
                }
                m
            }
            Op::Linears(layers) => {
                let outputs = layers.last().map_or(0, |l| l.outputs);
                ensure!(
                    layout == SampleLayout::Dense
                        && layers.first().is_some_and(|l| l.inputs == z.len()),
                    "a linear layer after an output of shape {shape:?}"
                );
                let mut y = buffer(outputs);
                y.clear();
                y.resize(outputs, 0.0);
                self.sample(layers, z, &mut y);
                dense(y, vec![outputs])
            }
            Op::Norm { .. } | Op::Elu | Op::Flatten => {
                unreachable!("`run` applies ELU, batch norm and flatten in place")
            }
        })
    }
}
