//! Facts about registered models.

use candle_core::Device;
use supermask_core::{build_model, registry, MaskingConfig, ModelSpec, Result};

/// Number of weights (masked entries; batch-norm parameters excluded) of a model for
/// per-sample inputs of shape `input` (e.g. [`ModelSpec::paper_input`]), counted on a dense
/// build.
pub fn weight_count(spec: &dyn ModelSpec, input: &[usize]) -> Result<usize> {
    let init = registry::init_from_table(toml::from_str("type = \"he\"")?)?;
    let model = build_model(
        spec,
        input,
        &MaskingConfig::Dense { weight_init: init },
        &Device::Cpu,
        0,
    )?;
    Ok(model.layers().iter().map(|l| l.spec().numel()).sum())
}
