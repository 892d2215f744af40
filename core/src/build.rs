//! [`build_model`]: a model spec and a masking config to an initialized [`Network`].

use crate::{
    config::{ForwardCtx, MaskingConfig},
    layer::LayerFactory,
    mask::MaskCtx,
    model::{masked_layers_mut, Model, ModelSpec},
    network::Network,
    Result,
};
use anyhow::Context;
use candle_core::{Device, Tensor};

/// Bytes a weight costs in training: the frozen weight, the scores, their gradient, the
/// momentum buffer, the effective weight and the mask, f32 each (a dense layer needs fewer;
/// the bound is for the larger kind).
const TRAINING_BYTES_PER_WEIGHT: u64 = 6 * 4;

/// Fails, naming the largest layer, when the model's weights would need more memory than the
/// machine has ([`crate::limits`]): an absurd width is an error here instead of an
/// out-of-memory kill, an allocation abort or a weight count that wraps.
pub fn check_model_memory(arch: &crate::Architecture) -> Result<()> {
    let mut total: u64 = 0;
    let mut largest: Option<(u64, String)> = None;
    for l in arch.layers()? {
        let n = l
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .with_context(|| format!("layer {}: weight shape {:?} overflows", l.name, l.shape))?;
        total = total
            .checked_add(n)
            .context("the model's weight count overflows")?;
        if largest.as_ref().is_none_or(|(m, _)| n > *m) {
            largest = Some((n, l.name.clone()));
        }
    }
    let bytes = crate::limits::bytes_of(total, TRAINING_BYTES_PER_WEIGHT, "the model's weights")?;
    let (n, name) = largest.unwrap_or_default();
    crate::limits::check_alloc(
        bytes,
        &format!("the model ({total} weights; the largest layer, {name}, has {n})"),
    )
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
    let arch = spec.architecture(input)?;
    arch.output_shape()?;
    check_model_memory(&arch)?;
    let mut factory = LayerFactory::new(masking.clone(), device.clone(), seed);
    let mut model: Box<dyn Model> = Box::new(Network::build(arch, &mut factory)?);
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
