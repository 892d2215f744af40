//! The fully-connected network of the paper (Table 7): 784-300-100-10, no biases, ELU
//! (alpha = 1) after every hidden layer, 266,200 weights.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use supermask_core::{
    model::check_chain, register_plugin, ForwardCtx, Layer, LayerFactory, Model, ModelSpec, Result,
};

fn default_input() -> usize {
    784
}
fn default_hidden() -> Vec<usize> {
    vec![300, 100]
}
fn default_classes() -> usize {
    10
}
fn default_alpha() -> f64 {
    1.0
}

/// Configuration of a fully-connected network (`[model] type = "fcn"`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FcnSpec {
    /// Input features (784 for MNIST).
    #[serde(default = "default_input")]
    pub input: usize,
    /// Hidden layer widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Output classes.
    #[serde(default = "default_classes")]
    pub classes: usize,
    /// ELU alpha (the paper: 1).
    #[serde(default = "default_alpha")]
    pub elu_alpha: f64,
}

impl Default for FcnSpec {
    fn default() -> Self {
        Self {
            input: default_input(),
            hidden: default_hidden(),
            classes: default_classes(),
            elu_alpha: default_alpha(),
        }
    }
}

/// A built FCN: layers `fc1..fcN`.
pub struct Fcn {
    layers: Vec<Layer>,
    alpha: f64,
}

#[typetag::serde(name = "fcn")]
impl ModelSpec for FcnSpec {
    fn input_shape(&self) -> Vec<usize> {
        vec![self.input]
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn build(&self, factory: &mut LayerFactory) -> Result<Box<dyn Model>> {
        let mut widths = vec![self.input];
        widths.extend(&self.hidden);
        widths.push(self.classes);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| factory.linear(&format!("fc{}", i + 1), w[0], w[1]))
            .collect::<Result<Vec<_>>>()?;
        let out = check_chain(&[self.input], &layers.iter().collect::<Vec<_>>())?;
        anyhow::ensure!(
            out == [self.classes],
            "fcn: output {out:?} != [{}]",
            self.classes
        );
        Ok(Box::new(Fcn {
            layers,
            alpha: self.elu_alpha,
        }))
    }
}
register_plugin!(
    Model,
    "fcn",
    FcnSpec,
    "fully-connected net, default 784-300-100-10, no biases, ELU (Table 7: 266,200 weights)"
);

impl Model for Fcn {
    fn forward_t(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut x = xs.flatten_from(1)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_act(&x, ctx, (i < last).then_some(self.alpha))?;
        }
        Ok(x)
    }

    fn layers(&self) -> Vec<&Layer> {
        self.layers.iter().collect()
    }

    fn layers_mut(&mut self) -> Vec<&mut Layer> {
        self.layers.iter_mut().collect()
    }
}
