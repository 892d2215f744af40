//! The in-memory content of an `.ssm` file.

use serde_json::Value;

/// A whole exported model.
#[derive(Clone, Debug, PartialEq)]
pub struct SsmModel {
    /// The architecture: the model spec as the run's config has it, in JSON (e.g.
    /// `{"type": "fcn", "hidden": [300, 100], ...}`).
    pub model: Value,
    /// The masked layers, in the model's layer order.
    pub layers: Vec<SsmLayer>,
    /// Non-masked parameters by name, in file order (batch-norm scale, shift and running
    /// statistics): `(name, shape, values)`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// One masked layer.
#[derive(Clone, Debug, PartialEq)]
pub struct SsmLayer {
    /// The layer's name (`fc1`, `conv2`, `s1.b1.conv1`).
    pub name: String,
    /// The weight shape (`[out, in]` or `[c_out, c_in, k, k]`).
    pub shape: Vec<usize>,
    /// The effective weight `W * g(M)`.
    pub weights: LayerWeights,
}

/// The effective weight of a masked layer.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerWeights {
    /// Signed-constant weights: entry `i` is `pattern[i] * magnitude`, `pattern[i]` in
    /// `{-1, 0, 1}` (row-major over `shape`).
    Ternary {
        /// The layer's weight magnitude `|W|`.
        magnitude: f32,
        /// The sign pattern of `W * g(M)`.
        pattern: Vec<i8>,
    },
    /// Real-valued weights: the dense effective weight, `0.0` where masked (row-major).
    Values(Vec<f32>),
}

impl SsmLayer {
    /// Number of weights (product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of non-zero entries of the effective weight.
    pub fn kept(&self) -> usize {
        match &self.weights {
            LayerWeights::Ternary { pattern, .. } => pattern.iter().filter(|&&p| p != 0).count(),
            LayerWeights::Values(v) => v.iter().filter(|&&x| x != 0.0).count(),
        }
    }

    /// The dense effective weight, row-major.
    pub fn dense(&self) -> Vec<f32> {
        match &self.weights {
            LayerWeights::Ternary { magnitude, pattern } => {
                pattern.iter().map(|&p| f32::from(p) * magnitude).collect()
            }
            LayerWeights::Values(v) => v.clone(),
        }
    }
}
