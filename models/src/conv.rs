//! The VGG-like Conv2/4/6/8 of Table 7 (Frankle & Carbin's, as used by Zhou et al. and the
//! paper): stages of two 3x3 "same" convolutions followed by a 2x2 max-pool (64, 128, 256, 512
//! filters), then fully connected 256-256-10; ELU after every conv and hidden dense layer,
//! no biases, no batch norm. Weights on CIFAR's 3x32x32: Conv2 4,300,992; Conv4 2,425,024;
//! Conv6 2,261,184; Conv8 5,275,840. They run on any `[channels, height, width]` (MNIST's
//! 1x28x28 natively); pools round down, so the first dense layer's width follows the input.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use supermask_core::{register_plugin, ForwardCtx, Layer, LayerFactory, Model, ModelSpec, Result};

fn default_classes() -> usize {
    10
}
fn default_alpha() -> f64 {
    1.0
}

/// A built Conv network.
pub struct ConvNet {
    convs: Vec<Layer>,
    fcs: Vec<Layer>,
    alpha: f64,
}

impl Model for ConvNet {
    fn forward_t(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut x = xs.clone();
        for pair in self.convs.chunks(2) {
            // conv -> ELU (-> conv -> ELU) -> 2x2 max-pool; the pool is the last conv's epilogue.
            let last = pair.len() - 1;
            for (i, conv) in pair.iter().enumerate() {
                x = conv.forward_epilogue(&x, ctx, Some(self.alpha), i == last)?;
            }
        }
        x = x.flatten_from(1)?;
        let last = self.fcs.len() - 1;
        for (i, fc) in self.fcs.iter().enumerate() {
            x = fc.forward_act(&x, ctx, (i < last).then_some(self.alpha))?;
        }
        Ok(x)
    }

    fn layers(&self) -> Vec<&Layer> {
        self.convs.iter().chain(&self.fcs).collect()
    }

    fn layers_mut(&mut self) -> Vec<&mut Layer> {
        self.convs.iter_mut().chain(self.fcs.iter_mut()).collect()
    }
}

/// Builds a Conv net with `stages` stages for `[channels, height, width]` inputs.
fn build_conv(
    factory: &mut LayerFactory,
    input: &[usize],
    stages: usize,
    classes: usize,
    alpha: f64,
) -> Result<Box<dyn Model>> {
    anyhow::ensure!(
        input.len() == 3,
        "conv1: a Conv net takes images [channels, height, width], got samples of shape \
         {input:?} (use the fcn for flat data)"
    );
    let mut shape = input.to_vec();
    let mut convs = Vec::new();
    for s in 0..stages {
        let filters = 64 << s;
        for _ in 0..2 {
            let name = format!("conv{}", convs.len() + 1);
            let layer = factory.conv2d(&name, shape[0], filters, 3, 1, 1)?;
            shape = layer.spec().output_shape(&shape)?;
            convs.push(layer);
        }
        anyhow::ensure!(
            shape[1] >= 2 && shape[2] >= 2,
            "conv{}: its output {:?} is too small for the 2x2 max-pool (input {input:?} has too \
             few pixels for {stages} stages)",
            convs.len(),
            shape
        );
        shape = vec![shape[0], shape[1] / 2, shape[2] / 2];
    }
    let mut width = shape.iter().product::<usize>();
    let mut fcs = Vec::new();
    for (i, out) in [256, 256, classes].into_iter().enumerate() {
        let layer = factory.linear(&format!("fc{}", i + 1), width, out)?;
        width = layer.spec().output_shape(&[width])?[0];
        fcs.push(layer);
    }
    Ok(Box::new(ConvNet { convs, fcs, alpha }))
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
            fn build(&self, factory: &mut LayerFactory, input: &[usize]) -> Result<Box<dyn Model>> {
                build_conv(factory, input, $stages, self.classes, self.elu_alpha)
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
