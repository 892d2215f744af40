//! The paper's CIFAR ResNets, as the authors' code built them (REPRODUCTION-NOTES), which
//! differ from He et al.'s:
//!
//! - stem: 3x3 conv (w filters) -> BN -> ELU -> 3x3 max-pool, stride 1, same;
//! - three stages of w, 2w, 4w filters (w = 16 x width multiplier), 3/9/18 blocks each for
//!   ResNet20/56/110;
//! - the first block of every stage is a projection block: 1x1 conv (stride 1 in stage 1, 2
//!   after) -> BN -> ELU -> 3x3 conv -> BN -> ELU, shortcut 1x1 conv (same stride) -> BN,
//!   output ELU(x + shortcut);
//! - other blocks: 3x3 conv -> BN -> ELU -> 3x3 conv -> BN, output ELU(x + input);
//! - head: global average pool -> dense 4w -> classes.
//!
//! They run on any `[channels, height, width]` input (the weight counts below are for
//! CIFAR's 3x32x32; only the stem's input channels depend on the input).
//!
//! Weights (no biases, BN excluded): `967 w^2 + 27 w + 4 w classes` for ResNet20 (248,624 at
//! w = 16), 834,992 for ResNet56 on CIFAR-100. ResNet110 here has the regular 18 blocks per
//! stage, 1,705,904 weights on CIFAR-100, where the paper reports 1,668,272: the authors'
//! masked ResNet110 has irregular blocks (e.g. a second stride-2 projection block in stage 3),
//! which we do not copy.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use supermask_core::{
    norm::global_avg_pool,
    ops::{elu, max_pool_same_stride1},
    register_plugin, BatchNorm, BnMode, ForwardCtx, Layer, LayerFactory, Model, ModelSpec, Result,
};

struct Block {
    conv1: Layer,
    bn1: BatchNorm,
    conv2: Layer,
    bn2: BatchNorm,
    /// Projection blocks: shortcut conv and its BN; the main path ends with an ELU.
    shortcut: Option<(Layer, BatchNorm)>,
}

/// A built ResNet.
pub struct ResNet {
    stem: Layer,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    head: Layer,
    alpha: f64,
}

impl Block {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx, alpha: f64) -> Result<Tensor> {
        let k = &ctx.kernels;
        let h = elu(
            &self.bn1.forward_t(&self.conv1.forward_t(x, ctx)?, ctx)?,
            alpha,
            k,
        )?;
        let h = self.bn2.forward_t(&self.conv2.forward_t(&h, ctx)?, ctx)?;
        let out = match &self.shortcut {
            Some((conv, bn)) => {
                (elu(&h, alpha, k)? + bn.forward_t(&conv.forward_t(x, ctx)?, ctx)?)?
            }
            None => (h + x)?,
        };
        elu(&out, alpha, k)
    }
}

impl Model for ResNet {
    fn forward_t(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let x = elu(
            &self
                .stem_bn
                .forward_t(&self.stem.forward_t(xs, ctx)?, ctx)?,
            self.alpha,
            &ctx.kernels,
        )?;
        let mut x = max_pool_same_stride1(&x, 3, &ctx.kernels)?;
        for b in &self.blocks {
            x = b.forward(&x, ctx, self.alpha)?;
        }
        self.head.forward_t(&global_avg_pool(&x)?, ctx)
    }

    fn layers(&self) -> Vec<&Layer> {
        let mut v = vec![&self.stem];
        for b in &self.blocks {
            v.push(&b.conv1);
            v.push(&b.conv2);
            if let Some((s, _)) = &b.shortcut {
                v.push(s);
            }
        }
        v.push(&self.head);
        v
    }

    fn layers_mut(&mut self) -> Vec<&mut Layer> {
        let mut v = vec![&mut self.stem];
        for b in &mut self.blocks {
            v.push(&mut b.conv1);
            v.push(&mut b.conv2);
            if let Some((s, _)) = &mut b.shortcut {
                v.push(s);
            }
        }
        v.push(&mut self.head);
        v
    }

    fn norms(&self) -> Vec<&BatchNorm> {
        let mut v = vec![&self.stem_bn];
        for b in &self.blocks {
            v.push(&b.bn1);
            v.push(&b.bn2);
            if let Some((_, bn)) = &b.shortcut {
                v.push(bn);
            }
        }
        v
    }

    fn norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = vec![&mut self.stem_bn];
        for b in &mut self.blocks {
            v.push(&mut b.bn1);
            v.push(&mut b.bn2);
            if let Some((_, bn)) = &mut b.shortcut {
                v.push(bn);
            }
        }
        v
    }
}

struct ResNetParams {
    blocks: usize,
    width: f64,
    classes: usize,
    bn: BnMode,
    stem_bn: BnMode,
    alpha: f64,
}

fn build_resnet(
    factory: &mut LayerFactory,
    input: &[usize],
    p: &ResNetParams,
) -> Result<Box<dyn Model>> {
    let w = (16.0 * p.width).round() as usize;
    anyhow::ensure!(
        w > 0 && p.blocks > 0,
        "resnet: width and blocks must be > 0"
    );
    anyhow::ensure!(
        input.len() == 3,
        "stem.conv: a ResNet takes images [channels, height, width], got samples of shape \
         {input:?}"
    );
    let dev = factory.device().clone();
    let stem = factory.conv2d("stem.conv", input[0], w, 3, 1, 1)?;
    let stem_bn = BatchNorm::new("stem.bn", w, p.stem_bn, &dev)?;
    let mut shape = stem.spec().output_shape(input)?;
    let mut blocks = Vec::new();
    for stage in 0..3 {
        let filters = w << stage;
        for b in 0..p.blocks {
            let name = format!("s{}.b{}", stage + 1, b + 1);
            let c_in = shape[0];
            let block = if b == 0 {
                let stride = if stage == 0 { 1 } else { 2 };
                let conv1 =
                    factory.conv2d(&format!("{name}.conv1"), c_in, filters, 1, stride, 0)?;
                let conv2 = factory.conv2d(&format!("{name}.conv2"), filters, filters, 3, 1, 1)?;
                let sc =
                    factory.conv2d(&format!("{name}.shortcut"), c_in, filters, 1, stride, 0)?;
                let main = conv2
                    .spec()
                    .output_shape(&conv1.spec().output_shape(&shape)?)?;
                let side = sc.spec().output_shape(&shape)?;
                anyhow::ensure!(
                    main == side,
                    "{name}: main path {main:?} != shortcut {side:?}"
                );
                shape = main;
                let bn = BatchNorm::new(&format!("{name}.shortcut_bn"), filters, p.bn, &dev)?;
                Block {
                    conv1,
                    bn1: BatchNorm::new(&format!("{name}.bn1"), filters, p.bn, &dev)?,
                    conv2,
                    bn2: BatchNorm::new(&format!("{name}.bn2"), filters, p.bn, &dev)?,
                    shortcut: Some((sc, bn)),
                }
            } else {
                let conv1 = factory.conv2d(&format!("{name}.conv1"), c_in, filters, 3, 1, 1)?;
                let conv2 = factory.conv2d(&format!("{name}.conv2"), filters, filters, 3, 1, 1)?;
                let out = conv2
                    .spec()
                    .output_shape(&conv1.spec().output_shape(&shape)?)?;
                anyhow::ensure!(out == shape, "{name}: output {out:?} != input {shape:?}");
                Block {
                    conv1,
                    bn1: BatchNorm::new(&format!("{name}.bn1"), filters, p.bn, &dev)?,
                    conv2,
                    bn2: BatchNorm::new(&format!("{name}.bn2"), filters, p.bn, &dev)?,
                    shortcut: None,
                }
            };
            blocks.push(block);
        }
    }
    let head = factory.linear("head", shape[0], p.classes)?;
    Ok(Box::new(ResNet {
        stem,
        stem_bn,
        blocks,
        head,
        alpha: p.alpha,
    }))
}

fn one() -> f64 {
    1.0
}
fn learnable() -> BnMode {
    BnMode::Learnable
}

macro_rules! resnet_spec {
    ($ty:ident, $name:literal, $blocks:expr, $classes:expr, $desc:literal) => {
        #[doc = concat!("`", $name, "`: ", $desc)]
        #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            /// Width multiplier (filters 16, 32, 64 times this).
            #[serde(default = "one")]
            pub width: f64,
            /// Output classes.
            #[serde(default = "classes")]
            pub classes: usize,
            /// Batch norm of the blocks (the authors' masked nets: `none`).
            #[serde(default)]
            pub bn: BnMode,
            /// Batch norm after the stem (the authors' masked ResNet20: `learnable`).
            #[serde(default = "learnable")]
            pub stem_bn: BnMode,
            /// ELU alpha.
            #[serde(default = "one")]
            pub elu_alpha: f64,
        }

        impl $ty {
            fn params(&self) -> ResNetParams {
                ResNetParams {
                    blocks: $blocks,
                    width: self.width,
                    classes: self.classes,
                    bn: self.bn,
                    stem_bn: self.stem_bn,
                    alpha: self.elu_alpha,
                }
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self {
                    width: 1.0,
                    classes: $classes,
                    bn: BnMode::None,
                    stem_bn: BnMode::Learnable,
                    elu_alpha: 1.0,
                }
            }
        }

        #[typetag::serde(name = $name)]
        impl ModelSpec for $ty {
            fn paper_input(&self) -> Vec<usize> {
                vec![3, 32, 32]
            }
            fn classes(&self) -> usize {
                self.classes
            }
            fn build(&self, factory: &mut LayerFactory, input: &[usize]) -> Result<Box<dyn Model>> {
                build_resnet(factory, input, &self.params())
            }
        }
        register_plugin!(Model, $name, $ty, $desc);
    };
}

mod resnet20 {
    use super::*;
    fn classes() -> usize {
        10
    }
    resnet_spec!(
        ResNet20Spec,
        "resnet20",
        3,
        10,
        "authors' ResNet20 (3 blocks/stage), width multiplier; 248,624 weights at x1 on CIFAR-10"
    );
}
mod resnet56 {
    use super::*;
    fn classes() -> usize {
        100
    }
    resnet_spec!(
        ResNet56Spec,
        "resnet56",
        9,
        100,
        "authors' ResNet56 (9 blocks/stage); 834,992 weights on CIFAR-100"
    );
}
mod resnet110 {
    use super::*;
    fn classes() -> usize {
        100
    }
    resnet_spec!(
        ResNet110Spec,
        "resnet110",
        18,
        100,
        "regular ResNet110 (18 blocks/stage); 1,705,904 weights on CIFAR-100 (paper: 1,668,272)"
    );
}

pub use resnet110::ResNet110Spec;
pub use resnet20::ResNet20Spec;
pub use resnet56::ResNet56Spec;
