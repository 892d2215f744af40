//! Checkpoints: model tensors, optimizer state and the loop position in one safetensors file,
//! written atomically (temporary file, then rename), so a process killed at any instant leaves
//! either the previous checkpoint or the new one, never a mix. `state.json` mirrors the loop
//! position for people and scripts; loading trusts the copy inside the checkpoint.

use crate::trainer::Trainer;
use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, path::Path};
use supermask_core::{
    fsio::{write_atomic, write_atomic_with},
    optim::PlateauState,
    trainable_params, Result,
};

/// File name of the tensor checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the loop state (a readable mirror of the checkpoint's own copy).
pub const STATE_FILE: &str = "state.json";
/// Name of the checkpoint tensor holding the loop state as JSON bytes (u8).
const STATE_TENSOR: &str = "loop.state";

/// Where the loop stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimizer steps.
    pub step: u64,
    /// Reduce-on-plateau state.
    #[serde(default)]
    pub plateau: PlateauState,
}

/// The checkpoint name of a parameter's momentum buffer.
fn velocity_key(param: &str) -> String {
    format!("optim.{param}.velocity")
}

/// The parameter whose momentum buffer a checkpoint name holds ([`velocity_key`] inverted).
fn velocity_param(key: &str) -> Option<&str> {
    key.strip_prefix("optim.")?.strip_suffix(".velocity")
}

/// Saves the trainer's tensors and loop state into `dir`.
pub fn save(dir: &Path, trainer: &Trainer, state: &LoopState) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let model = trainer.model();
    let layers = model.layers();
    for layer in &layers {
        tensors.extend(layer.named_tensors()?);
    }
    for bn in model.norms() {
        tensors.extend(bn.named_tensors());
    }
    for (name, v) in trainer.optimizer().velocity()? {
        tensors.insert(velocity_key(&name), v);
    }
    let state_json = serde_json::to_string_pretty(state)?;
    let bytes = state_json.as_bytes().to_vec();
    let n = bytes.len();
    tensors.insert(
        STATE_TENSOR.to_string(),
        Tensor::from_vec(bytes, n, &Device::Cpu)?,
    );
    write_atomic_with(&dir.join(CHECKPOINT_FILE), |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    write_atomic(&dir.join(STATE_FILE), state_json.as_bytes())
}

/// Restores tensors (and optimizer state when `with_optimizer`) from `dir`.
pub fn load(
    dir: &Path,
    trainer: &mut Trainer,
    device: &Device,
    with_optimizer: bool,
) -> Result<LoopState> {
    let path = dir.join(CHECKPOINT_FILE);
    let tensors = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    let get = |k: &str| -> Result<Tensor> {
        tensors
            .get(k)
            .cloned()
            .with_context(|| format!("checkpoint {} has no tensor {k}", path.display()))
    };
    for layer in trainer.model_mut().layers_mut() {
        layer.load_tensors(&get)?;
    }
    for bn in trainer.model_mut().norms_mut() {
        bn.load_tensors(&get)?;
    }
    let state: LoopState = match tensors.get(STATE_TENSOR) {
        Some(t) => {
            let bytes = t.to_vec1::<u8>()?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing the loop state in {}", path.display()))?
        }
        // Checkpoints written before the state moved into the file.
        None => {
            let state_path = dir.join(STATE_FILE);
            serde_json::from_str(
                &std::fs::read_to_string(&state_path)
                    .with_context(|| format!("reading {}", state_path.display()))?,
            )
            .with_context(|| format!("parsing {}", state_path.display()))?
        }
    };
    if with_optimizer {
        // Momentum buffers by parameter name: every `optim.<param>.velocity` tensor.
        let velocity: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| Some((velocity_param(k)?.to_string(), t.clone())))
            .collect();
        let shapes: Vec<Vec<usize>> = trainable_params(trainer.model())
            .iter()
            .map(|(_, v)| v.dims().to_vec())
            .collect();
        trainer
            .optimizer_mut()
            .set_velocity(velocity, &shapes)
            .with_context(|| format!("checkpoint {}", path.display()))?;
        trainer.step = state.step;
        trainer.plateau = state.plateau.clone();
    }
    Ok(state)
}
