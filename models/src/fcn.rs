//! The fully-connected network of the paper (Table 7): 784-300-100-10, no biases, ELU
//! (alpha = 1) after every hidden layer, 266,200 weights.

use serde::{Deserialize, Serialize};
use supermask_core::{
    arch::{Architecture, Step},
    register_plugin, ModelSpec, Result,
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

#[typetag::serde(name = "fcn")]
impl ModelSpec for FcnSpec {
    fn paper_input(&self) -> Vec<usize> {
        vec![self.input.unwrap_or(784)]
    }

    fn classes(&self) -> usize {
        self.classes
    }

    /// Flatten, then `fc1..fcN` with an ELU between consecutive layers.
    fn architecture(&self, input: &[usize]) -> Result<Architecture> {
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
        let mut steps = vec![Step::Flatten];
        for (i, w) in widths.windows(2).enumerate() {
            if i > 0 {
                steps.push(Step::Elu);
            }
            steps.push(Step::Linear {
                name: format!("fc{}", i + 1),
                inputs: w[0],
                outputs: w[1],
            });
        }
        Ok(Architecture {
            input: input.to_vec(),
            elu_alpha: self.elu_alpha,
            steps,
        })
    }
}
register_plugin!(
    Model,
    "fcn",
    FcnSpec,
    "fully-connected net, default 784-300-100-10, no biases, ELU (Table 7: 266,200 weights)"
);
