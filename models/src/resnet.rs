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

use serde::{Deserialize, Serialize};
use supermask_core::{
    arch::{Architecture, Step},
    register_plugin, BnMode, ModelSpec, Result,
};

struct ResNetParams {
    blocks: usize,
    width: f64,
    classes: usize,
    bn: BnMode,
    stem_bn: BnMode,
    alpha: f64,
}

/// A `k x k` convolution with "same" padding for odd `k` (`k / 2`).
fn conv(name: String, c_in: usize, c_out: usize, k: usize, stride: usize) -> Step {
    Step::Conv {
        name,
        c_in,
        c_out,
        k,
        stride,
        padding: k / 2,
    }
}

fn bn(name: String, channels: usize, mode: BnMode) -> Step {
    Step::BatchNorm {
        name,
        channels,
        mode,
    }
}

fn resnet_architecture(input: &[usize], p: &ResNetParams) -> Result<Architecture> {
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
    let mut steps = vec![
        conv("stem.conv".into(), input[0], w, 3, 1),
        bn("stem.bn".into(), w, p.stem_bn),
        Step::Elu,
        Step::MaxPool {
            k: 3,
            stride: 1,
            padding: 1,
        },
    ];
    let mut c = w;
    for stage in 0..3 {
        let filters = w << stage;
        for b in 0..p.blocks {
            let n = format!("s{}.b{}", stage + 1, b + 1);
            let (main, shortcut) = if b == 0 {
                // Projection block: 1x1 conv1 and shortcut with the stage's stride.
                let stride = if stage == 0 { 1 } else { 2 };
                (
                    vec![
                        conv(format!("{n}.conv1"), c, filters, 1, stride),
                        bn(format!("{n}.bn1"), filters, p.bn),
                        Step::Elu,
                        conv(format!("{n}.conv2"), filters, filters, 3, 1),
                        bn(format!("{n}.bn2"), filters, p.bn),
                        Step::Elu,
                    ],
                    vec![
                        conv(format!("{n}.shortcut"), c, filters, 1, stride),
                        bn(format!("{n}.shortcut_bn"), filters, p.bn),
                    ],
                )
            } else {
                (
                    vec![
                        conv(format!("{n}.conv1"), c, filters, 3, 1),
                        bn(format!("{n}.bn1"), filters, p.bn),
                        Step::Elu,
                        conv(format!("{n}.conv2"), filters, filters, 3, 1),
                        bn(format!("{n}.bn2"), filters, p.bn),
                    ],
                    Vec::new(),
                )
            };
            steps.extend([Step::Residual { main, shortcut }, Step::Elu]);
            c = filters;
        }
    }
    steps.extend([
        Step::GlobalAvgPool,
        Step::Linear {
            name: "head".into(),
            inputs: c,
            outputs: p.classes,
        },
    ]);
    Ok(Architecture {
        input: input.to_vec(),
        elu_alpha: p.alpha,
        steps,
    })
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
            fn architecture(&self, input: &[usize]) -> Result<Architecture> {
                resnet_architecture(input, &self.params())
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
