//! [`Network`]: the trainable model of an [`Architecture`], built by asking the
//! [`LayerFactory`] for every weight layer in the architecture's order.
//!
//! The forward pass runs the steps in order. A weight layer directly followed by an ELU (and,
//! for a convolution, then by a 2x2 stride-2 max-pool) runs them as its epilogue
//! ([`Layer::forward_epilogue`]), as does a convolution followed by a parameter-free batch norm
//! (mode `none`, the signed ResNets'; then the ELU may follow), so on the fused path neither
//! the pre-activation nor the unpooled map becomes a graph node, with the values and gradients
//! of the separate ops bit for bit; a residual sum followed by an ELU is one op
//! ([`ops::add_elu`]); every other step is one op of [`crate::ops`].

use crate::{
    arch::{Architecture, Step},
    config::ForwardCtx,
    layer::{Layer, LayerFactory},
    model::Model,
    norm::{global_avg_pool, BatchNorm},
    ops, tape, Result,
};
use anyhow::Context;
use candle_core::Tensor;

/// A step with its layer or batch norm resolved to an index into the network's lists.
#[derive(Debug)]
enum Node {
    Layer(usize),
    Norm(usize),
    Elu,
    MaxPool {
        k: usize,
        stride: usize,
        padding: usize,
    },
    Flatten,
    GlobalAvgPool,
    Residual {
        main: Vec<Node>,
        shortcut: Vec<Node>,
    },
}

/// The model of an [`Architecture`].
pub struct Network {
    arch: Architecture,
    nodes: Vec<Node>,
    layers: Vec<Layer>,
    norms: Vec<BatchNorm>,
}

fn resolve(
    steps: &[Step],
    factory: &mut LayerFactory,
    layers: &mut Vec<Layer>,
    norms: &mut Vec<BatchNorm>,
) -> Result<Vec<Node>> {
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        out.push(match s {
            Step::Linear { .. } | Step::Conv { .. } => {
                let spec = s.layer_spec()?.expect("a weight step has a layer");
                layers.push(factory.layer(spec)?);
                Node::Layer(layers.len() - 1)
            }
            Step::BatchNorm {
                name,
                channels,
                mode,
            } => {
                norms.push(BatchNorm::new(name, *channels, *mode, factory.device())?);
                Node::Norm(norms.len() - 1)
            }
            Step::Elu => Node::Elu,
            Step::MaxPool { k, stride, padding } => {
                anyhow::ensure!(
                    (*k, *stride, *padding) == (2, 2, 0)
                        || (*stride == 1 && k % 2 == 1 && *padding == k / 2),
                    "max-pool {k}x{k} stride {stride} padding {padding}: training runs 2x2 \
                     stride 2 and odd windows with stride 1 and 'same' padding"
                );
                Node::MaxPool {
                    k: *k,
                    stride: *stride,
                    padding: *padding,
                }
            }
            Step::Flatten => Node::Flatten,
            Step::GlobalAvgPool => Node::GlobalAvgPool,
            Step::Residual { main, shortcut } => Node::Residual {
                main: resolve(main, factory, layers, norms)?,
                shortcut: resolve(shortcut, factory, layers, norms)?,
            },
        });
    }
    Ok(out)
}

impl Network {
    /// Checks `arch` ([`Architecture::output_shape`]) and builds its layers (depth first, the
    /// order of [`Architecture::layers`]) and batch norms.
    pub fn build(arch: Architecture, factory: &mut LayerFactory) -> Result<Self> {
        arch.output_shape()?;
        let (mut layers, mut norms) = (Vec::new(), Vec::new());
        let nodes = resolve(&arch.steps, factory, &mut layers, &mut norms)?;
        Ok(Self {
            arch,
            nodes,
            layers,
            norms,
        })
    }

    fn run(&self, nodes: &[Node], x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let alpha = self.arch.elu_alpha;
        let mut x = x.clone();
        let mut i = 0;
        while i < nodes.len() {
            let mut used = 1;
            x = match &nodes[i] {
                Node::Layer(l) => {
                    let layer = &self.layers[*l];
                    let conv = layer.spec().conv().is_some();
                    // A convolution's parameter-free batch norm, then an ELU, then (after an
                    // ELU) a 2x2 stride-2 max-pool join the layer's op.
                    let scale = match nodes.get(i + 1) {
                        Some(Node::Norm(n)) if conv => self.norms[*n].fixed_scale(),
                        _ => None,
                    };
                    let j = i + 1 + usize::from(scale.is_some());
                    let elu = matches!(nodes.get(j), Some(Node::Elu));
                    let pool2 = elu
                        && conv
                        && matches!(
                            nodes.get(j + 1),
                            Some(Node::MaxPool {
                                k: 2,
                                stride: 2,
                                padding: 0
                            })
                        );
                    used += usize::from(scale.is_some()) + usize::from(elu) + usize::from(pool2);
                    let epilogue = ops::Epilogue {
                        scale,
                        elu: elu.then_some(alpha),
                        pool2,
                    };
                    layer.forward_epilogue(&x, ctx, &epilogue)?
                }
                Node::Norm(n) => self.norms[*n].forward_t(&x, ctx)?,
                Node::Elu => ops::elu(&x, alpha, &ctx.kernels)?,
                Node::MaxPool {
                    k: 2, stride: 2, ..
                } => ops::max_pool2(&x, &ctx.kernels)?,
                Node::MaxPool { k, .. } => ops::max_pool_same_stride1(&x, *k, &ctx.kernels)?,
                Node::Flatten => x.flatten_from(1)?,
                Node::GlobalAvgPool => global_avg_pool(&x)?,
                Node::Residual { main, shortcut } => {
                    let m = self.run(main, &x, ctx)?;
                    let s = if shortcut.is_empty() {
                        x.clone()
                    } else {
                        self.run(shortcut, &x, ctx)?
                    };
                    // The ELU after a residual sum joins it in one op.
                    if matches!(nodes.get(i + 1), Some(Node::Elu)) {
                        used += 1;
                        ops::add_elu(&m, &s, alpha, &ctx.kernels)?
                    } else {
                        (m + s)?
                    }
                }
            };
            i += used;
        }
        Ok(x)
    }
}

impl Model for Network {
    fn forward_t(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        anyhow::ensure!(
            xs.rank() >= 1 && xs.dims()[1..] == self.arch.input[..],
            "input batch {:?} does not hold samples of shape {:?}",
            xs.dims(),
            self.arch.input
        );
        // The trunk (`crate::tape`): a training step's tape differentiates the fused ops of
        // the layers, norms, ELUs, pools and residual blocks itself. It is cut before the first
        // other node (a flatten, the global average pool) that gets a tensor with a gradient,
        // else at the output; such a node on the data alone (the FCN's leading flatten) has no
        // gradient and does not end it.
        let fused = |n: &Node| {
            matches!(
                n,
                Node::Layer(_)
                    | Node::Norm(_)
                    | Node::Elu
                    | Node::MaxPool { .. }
                    | Node::Residual { .. }
            )
        };
        let run = || {
            let (mut x, mut rest) = (xs.clone(), &self.nodes[..]);
            while !rest.is_empty() {
                let n = rest.iter().position(|n| !fused(n)).unwrap_or(rest.len());
                let (segment, tail) = rest.split_at(n.max(1));
                if n == 0 && x.track_op() {
                    x = tape::cut(&x)?;
                }
                x = self.run(segment, &x, ctx)?;
                rest = tail;
            }
            tape::cut(&x)
        };
        run().context("forward pass")
    }

    fn layers(&self) -> Vec<&Layer> {
        self.layers.iter().collect()
    }

    fn layers_mut(&mut self) -> Vec<&mut Layer> {
        self.layers.iter_mut().collect()
    }

    fn norms(&self) -> Vec<&BatchNorm> {
        self.norms.iter().collect()
    }

    fn norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        self.norms.iter_mut().collect()
    }

    fn architecture(&self) -> Option<&Architecture> {
        Some(&self.arch)
    }
}
