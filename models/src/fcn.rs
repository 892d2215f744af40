//! The fully-connected network of the paper (Table 7): 784-300-100-10, no biases, ELU
//! (alpha = 1) after every hidden layer, 266,200 weights.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use supermask_core::{
    model::check_chain, register_plugin, ForwardCtx, Layer, LayerFactory, Model, ModelSpec, Result,
};

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
    /// Input features; by default the flattened size of the dataset's samples (784 for
    /// MNIST). When set, a dataset of another size is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<usize>,
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
            input: None,
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
    fn paper_input(&self) -> Vec<usize> {
        vec![self.input.unwrap_or(784)]
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn build(&self, factory: &mut LayerFactory, input: &[usize]) -> Result<Box<dyn Model>> {
        let flat: usize = input.iter().product();
        if let Some(n) = self.input {
            anyhow::ensure!(
                n == flat,
                "fc1: the model is configured for {n} inputs (model.input) but the data has \
                 {flat} values per sample (shape {input:?}); remove model.input to take it from \
                 the data"
            );
        }
        let mut widths = vec![flat];
        widths.extend(&self.hidden);
        widths.push(self.classes);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| factory.linear(&format!("fc{}", i + 1), w[0], w[1]))
            .collect::<Result<Vec<_>>>()?;
        let out = check_chain(&[flat], &layers.iter().collect::<Vec<_>>())?;
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
