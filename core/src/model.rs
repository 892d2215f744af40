//! The model traits and [`build_model`], which turns a spec and a masking config
//! ([`crate::config::MaskingConfig`]) into an initialized model.

use crate::{
    config::{ForwardCtx, MaskingConfig},
    layer::{Layer, LayerFactory, MaskedLayer},
    mask::MaskCtx,
    norm::BatchNorm,
    Result,
};
use anyhow::Context;
use candle_core::{Device, Tensor, Var};
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
    /// model for the shape of its dataset instead (see [`ModelSpec::build`]).
    fn paper_input(&self) -> Vec<usize>;

    /// Number of output classes.
    fn classes(&self) -> usize;

    /// Builds the model for per-sample inputs of shape `input` (channels first, e.g.
    /// `[1, 28, 28]`), asking the factory for every weight layer. Implementations check every
    /// layer's shapes here (see [`check_chain`]) so that an input the architecture cannot take
    /// fails at construction with the layer's name.
    fn build(&self, factory: &mut LayerFactory, input: &[usize]) -> Result<Box<dyn Model>>;
}

/// Checks a chain of layers: each layer's input shape is the previous one's output shape
/// (for sequential stacks without parameter-free ops between the layers, such as the FCN).
/// Fails with the first offending layer's name.
pub fn check_chain(input: &[usize], layers: &[&Layer]) -> Result<Vec<usize>> {
    let mut shape = input.to_vec();
    for l in layers {
        shape = l.spec().output_shape(&shape)?;
    }
    Ok(shape)
}

/// Builds and initializes a model for per-sample inputs of shape `input`: scores, then
/// thresholds from the initial scores, then the frozen weights whose variance may use each
/// layer's initial zero share `p0`.
pub fn build_model(
    spec: &dyn ModelSpec,
    input: &[usize],
    masking: &MaskingConfig,
    device: &Device,
    seed: u64,
) -> Result<Box<dyn Model>> {
    masking.validate()?;
    anyhow::ensure!(
        !input.is_empty() && input.iter().all(|&d| d > 0),
        "model input shape {input:?} has an empty dimension"
    );
    let mut factory = LayerFactory::new(masking.clone(), device.clone(), seed);
    let mut model = spec.build(&mut factory, input)?;
    if let Some(threshold) = masking.threshold() {
        let mut layers = masked_layers_mut(model.as_mut());
        let scores: Vec<Tensor> = layers
            .iter()
            .map(|l| l.scores().as_tensor().detach())
            .collect();
        let taus = threshold
            .init(&scores)
            .context("masking.threshold: initial thresholds")?;
        anyhow::ensure!(
            taus.len() == layers.len(),
            "threshold returned wrong number of layers"
        );
        for (layer, t) in layers.iter_mut().zip(taus) {
            layer.set_taus(t)?;
            let hard = layer
                .mask_fn()
                .hard(layer.scores().as_tensor(), t, &MaskCtx::eval())?;
            let [_, zero, _] = crate::layer::count_mask(&hard)?;
            let p0 = zero as f64 / layer.spec.numel() as f64;
            let w = factory.draw_masked_weight(&layer.spec, p0)?;
            layer.set_weight(w)?;
        }
    }
    // A forward pass of one sample proves the layers fit together end to end.
    let mut dims = vec![1];
    dims.extend(input);
    let probe = Tensor::zeros(dims.as_slice(), candle_core::DType::F32, device)?;
    let out = model
        .forward_t(&probe, &ForwardCtx::eval())
        .context("shape check of the model")?;
    anyhow::ensure!(
        out.dims() == [1, spec.classes()],
        "model output shape {:?}, expected [1, {}]",
        out.dims(),
        spec.classes()
    );
    Ok(model)
}
