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
    let mut model: Box<dyn Model> =
        Box::new(Network::build(spec.architecture(input)?, &mut factory)?);
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
