//! The VGG-like Conv2/4/6/8 of Table 7 (Frankle & Carbin's, as used by Zhou et al. and the
//! paper): stages of two 3x3 "same" convolutions followed by a 2x2 max-pool (64, 128, 256, 512
//! filters), then fully connected 256-256-10; ELU after every conv and hidden dense layer,
//! no biases, no batch norm. Weights on CIFAR's 3x32x32: Conv2 4,300,992; Conv4 2,425,024;
//! Conv6 2,261,184; Conv8 5,275,840. They run on any `[channels, height, width]` (MNIST's
//! 1x28x28 natively); pools round down, so the first dense layer's width follows the input.

use serde::{Deserialize, Serialize};
use supermask_core::{
    arch::{Architecture, Step},
    register_plugin, ModelSpec, Result,
};

fn default_classes() -> usize {
    10
}
fn default_alpha() -> f64 {
    1.0
}

/// `stages` of (conv, ELU, conv, ELU, 2x2 max-pool), flatten, then fc1-fc3 (256, 256,
/// `classes`) with an ELU between them.
fn conv_architecture(
    input: &[usize],
    stages: usize,
    classes: usize,
    alpha: f64,
) -> Result<Architecture> {
    anyhow::ensure!(
        input.len() == 3,
        "conv1: a Conv net takes images [channels, height, width], got samples of shape \
         {input:?} (use the fcn for flat data)"
    );
    let mut shape = input.to_vec();
    let mut steps = Vec::new();
    let mut n = 0;
    for s in 0..stages {
        let filters = 64 << s;
        for _ in 0..2 {
            n += 1;
            let conv = Step::Conv {
                name: format!("conv{n}"),
                c_in: shape[0],
                c_out: filters,
                k: 3,
                stride: 1,
                padding: 1,
            };
            shape = conv
                .layer_spec()?
                .expect("a conv step has a layer")
                .output_shape(&shape)?;
            steps.extend([conv, Step::Elu]);
        }
        anyhow::ensure!(
            shape[1] >= 2 && shape[2] >= 2,
            "conv{n}: its output {shape:?} is too small for the 2x2 max-pool (input {input:?} \
             has too few pixels for {stages} stages)"
        );
        shape = vec![shape[0], shape[1] / 2, shape[2] / 2];
        steps.push(Step::MaxPool {
            k: 2,
            stride: 2,
            padding: 0,
        });
    }
    steps.push(Step::Flatten);
    let mut width = shape.iter().product::<usize>();
    for (i, out) in [256, 256, classes].into_iter().enumerate() {
        if i > 0 {
            steps.push(Step::Elu);
        }
        steps.push(Step::Linear {
            name: format!("fc{}", i + 1),
            inputs: width,
            outputs: out,
        });
        width = out;
    }
    Ok(Architecture {
        input: input.to_vec(),
        elu_alpha: alpha,
        steps,
    })
}

macro_rules! conv_spec {
    ($ty:ident, $name:literal, $stages:expr, $desc:literal) => {
        #[doc = concat!("`", $name, "`: ", $desc)]
        #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            /// Output classes.
            #[serde(default = "default_classes")]
            pub classes: usize,
            /// ELU alpha (the paper: 1).
            #[serde(default = "default_alpha")]
            pub elu_alpha: f64,
        }

        impl Default for $ty {
            fn default() -> Self {
                Self {
                    classes: default_classes(),
                    elu_alpha: default_alpha(),
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
                conv_architecture(input, $stages, self.classes, self.elu_alpha)
            }
        }
        register_plugin!(Model, $name, $ty, $desc);
    };
}

conv_spec!(
    Conv2Spec,
    "conv2",
    1,
    "VGG-like 64,64,pool + FC 256-256-10 (Table 7: 4,300,992 weights)"
);
conv_spec!(
    Conv4Spec,
    "conv4",
    2,
    "VGG-like 2 conv stages + FC 256-256-10 (Table 7: 2,425,024 weights)"
);
conv_spec!(
    Conv6Spec,
    "conv6",
    3,
    "VGG-like 3 conv stages + FC 256-256-10 (Table 7: 2,261,184 weights)"
);
conv_spec!(
    Conv8Spec,
    "conv8",
    4,
    "VGG-like 4 conv stages + FC 256-256-10 (Table 7: 5,275,840 weights)"
);
