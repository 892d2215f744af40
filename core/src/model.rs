//! The model traits: a built [`Model`] and the [`ModelSpec`] that configs name, which writes
//! its [`Architecture`] (built and initialized by [`crate::build_model`]).

use crate::{
    arch::Architecture,
    config::ForwardCtx,
    layer::{Layer, MaskedLayer},
    norm::BatchNorm,
    Result,
};
use candle_core::{Tensor, Var};
use std::fmt::Debug;

/// A built model: a forward pass and a walk over its layers.
pub trait Model: Send + Sync {
    /// Forward pass of a batch `[batch, ...input_shape]` to logits `[batch, classes]`.
    fn forward_t(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor>;

    /// All weight layers, in forward order.
    fn layers(&self) -> Vec<&Layer>;

    /// All weight layers, mutably, in forward order.
    fn layers_mut(&mut self) -> Vec<&mut Layer>;

    /// Batch-norm layers (not weights: never masked or counted).
    fn norms(&self) -> Vec<&BatchNorm> {
        Vec::new()
    }

    /// Batch-norm layers, mutably.
    fn norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        Vec::new()
    }

    /// The architecture it was built from ([`crate::Network`]: always); the exported model
    /// file stores it and the inference engine runs it.
    fn architecture(&self) -> Option<&Architecture> {
        None
    }
}

/// The masked layers of a model, in forward order.
pub fn masked_layers_mut(model: &mut dyn Model) -> Vec<&mut MaskedLayer> {
    model
        .layers_mut()
        .into_iter()
        .filter_map(|l| match l {
            Layer::Masked(m) => Some(m),
            Layer::Dense(_) => None,
        })
        .collect()
}

/// Every trainable tensor of a model with its checkpoint name: the layers' scores (masked)
/// or weights (dense), then batch-norm parameters.
pub fn trainable_params(model: &dyn Model) -> Vec<(String, &Var)> {
    let mut v: Vec<_> = model.layers().into_iter().map(|l| l.trainable()).collect();
    for n in model.norms() {
        v.extend(n.params());
    }
    v
}

/// A model architecture as named in configs (`[model] type = "fcn"`).
#[typetag::serde(tag = "type")]
pub trait ModelSpec: Debug + Send + Sync {
    /// Per-sample input shape of the paper's dataset for this architecture, e.g. `[784]`
    /// (MNIST) or `[3, 32, 32]` (CIFAR): what weight counts are quoted at. A run builds its
    /// model for the shape of its dataset instead (see [`crate::build_model`]).
    fn paper_input(&self) -> Vec<usize>;

    /// Number of output classes.
    fn classes(&self) -> usize;

    /// The architecture for per-sample inputs of shape `input` (channels first, e.g.
    /// `[1, 28, 28]`): the one description that training ([`crate::build_model`]), checkpoints,
    /// metrics, the exported file and the inference engine use. Implementations check what
    /// the steps' shapes do not ([`Architecture::output_shape`] checks those), so that an
    /// input the architecture cannot take fails at construction with the layer's name.
    fn architecture(&self, input: &[usize]) -> Result<Architecture>;
}
