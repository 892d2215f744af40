//! Checkpoints: model tensors, optimizer state and the loop position in one safetensors file,
//! written atomically (temporary file, then rename), so a process killed at any instant leaves
//! either the previous checkpoint or the new one, never a mix. `state.json` mirrors the loop
//! position for people and scripts; loading trusts the copy inside the checkpoint.

use crate::trainer::Trainer;
use anyhow::Context;
use candle_core::{DType, Device, Tensor};
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

/// The checkpoint layout this build writes and the newest it reads (docs/checkpoints.md).
pub const CHECKPOINT_FORMAT: u32 = 1;

fn format_1() -> u32 {
    1
}

/// Where the loop stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// The checkpoint layout ([`CHECKPOINT_FORMAT`]; checkpoints written before it was
    /// recorded are format 1).
    #[serde(default = "format_1")]
    pub format: u32,
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

impl LoopState {
    /// Checks what a checkpoint's loop state claims: a plateau factor in (0, 1] (a factor
    /// outside it would train with a negative or growing learning rate) and a finite best
    /// loss. The step count is checked against the data by the run ([`crate::run`]).
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.format <= CHECKPOINT_FORMAT,
            "format {} was written by a newer supermask; this build reads format {CHECKPOINT_FORMAT}",
            self.format
        );
        let f = self.plateau.factor;
        anyhow::ensure!(
            f.is_finite() && f > 0.0 && f <= 1.0,
            "plateau.factor is {f}; it must be in (0, 1]"
        );
        if let Some(best) = self.plateau.best {
            anyhow::ensure!(
                best.is_finite(),
                "plateau.best is {best}; it must be finite"
            );
        }
        Ok(())
    }
}

/// A checkpoint tensor must be f32 with finite values (a running variance also >= 0): the
/// error names the file and the tensor.
fn check_tensor(path: &Path, key: &str, t: &Tensor) -> Result<()> {
    let p = path.display();
    anyhow::ensure!(
        t.dtype() == DType::F32,
        "checkpoint {p}: tensor {key} has dtype {:?}; checkpoints hold f32",
        t.dtype()
    );
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        anyhow::bail!(
            "checkpoint {p}: tensor {key} holds {} at index {i}",
            values[i]
        );
    }
    if key.ends_with(".running_var") {
        if let Some(i) = values.iter().position(|v| *v < 0.0) {
            anyhow::bail!(
                "checkpoint {p}: tensor {key} holds the negative variance {} at index {i}",
                values[i]
            );
        }
    }
    Ok(())
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
    supermask_core::fsio::fail_point("between-checkpoint-and-state");
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
        let t = tensors
            .get(k)
            .with_context(|| format!("checkpoint {} has no tensor {k}", path.display()))?;
        check_tensor(&path, k, t)?;
        Ok(t.clone())
    };
    for layer in trainer.model_mut().layers_mut() {
        layer.load_tensors(&get)?;
    }
    for bn in trainer.model_mut().norms_mut() {
        bn.load_tensors(&get)?;
    }
    let state: LoopState = match tensors.get(STATE_TENSOR) {
        Some(t) => {
            anyhow::ensure!(
                t.dtype() == DType::U8 && t.rank() == 1,
                "checkpoint {}: tensor {STATE_TENSOR} must be 1-d u8 (JSON bytes), it is {:?} {:?}",
                path.display(),
                t.dtype(),
                t.dims()
            );
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
    state
        .validate()
        .with_context(|| format!("checkpoint {}: loop state", path.display()))?;
    if with_optimizer {
        // Momentum buffers by parameter name: every `optim.<param>.velocity` tensor.
        let mut velocity: HashMap<String, Tensor> = HashMap::new();
        for (k, t) in &tensors {
            if let Some(param) = velocity_param(k) {
                check_tensor(&path, k, t)?;
                velocity.insert(param.to_string(), t.clone());
            }
        }
        // After a step with momentum every parameter has a buffer: a missing one would
        // silently restart from zero.
        if state.step > 0 && trainer.config().optimizer.momentum() != 0.0 {
            for (name, _) in trainable_params(trainer.model()) {
                anyhow::ensure!(
                    velocity.contains_key(&name),
                    "checkpoint {} has no tensor {} (the momentum of {name} after {} steps)",
                    path.display(),
                    velocity_key(&name),
                    state.step
                );
            }
        }
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
