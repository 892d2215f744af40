//! `supermask export`, `inspect` and `infer`: trained runs to `.ssm` files and back to
//! predictions through the sparse ternary engine (`supermask-export`).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use std::{io::Write, path::Path, time::Instant};
use supermask_core::{Architecture, Layer};
use supermask_datasets::{load_by_name, Split};
use supermask_export::{format, Engine, LayerWeights, SsmLayer, SsmModel};
use supermask_train::{config::RunConfig, rundir::RunDir, Trainer};

/// The exported content of a finished (or checkpointed) run directory: the architecture, each
/// masked layer's effective weight `W * g(M)` (one magnitude and a sign pattern when the
/// weights are signed constants), dense layers' weights, and the batch-norm tensors.
pub fn export_run(dir: &Path) -> Result<SsmModel> {
    let run = RunDir::open(dir)?;
    let trainer = run.trained_for_config(&Device::Cpu)?;
    export_trainer(&run.config, &trainer)
}

/// The exported content of a trainer's current model (see [`export_run`]).
pub fn export_trainer(cfg: &RunConfig, trainer: &Trainer) -> Result<SsmModel> {
    let model = trainer.model();
    let mut layers = Vec::new();
    for layer in model.layers() {
        let spec = layer.spec();
        let weights = match layer {
            Layer::Masked(l) => {
                let mask = l
                    .eval_mask()?
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?;
                // W itself, or the weight a rescaling mask multiplies (biprop's alpha sign(W)).
                let w = l.eval_weight()?.flatten_all()?.to_vec1::<f32>()?;
                let common = w
                    .first()
                    .map(|v| v.abs())
                    .filter(|&m| m > 0.0 && w.iter().all(|v| v.abs() == m));
                match common {
                    Some(magnitude) => LayerWeights::Ternary {
                        magnitude,
                        pattern: w
                            .iter()
                            .zip(&mask)
                            .map(|(w, m)| (w.signum() * m) as i8)
                            .collect(),
                    },
                    None => LayerWeights::Values(w.iter().zip(&mask).map(|(w, m)| w * m).collect()),
                }
            }
            Layer::Dense(l) => LayerWeights::Values(l.weight.flatten_all()?.to_vec1::<f32>()?),
        };
        layers.push(SsmLayer {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
            weights,
        });
    }
    let mut tensors = Vec::new();
    for bn in model.norms() {
        for (name, t) in bn.named_tensors() {
            tensors.push((name, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
        }
    }
    let arch = model
        .architecture()
        .context("the model has no architecture description, so the engine could not run it")?;
    let description = serde_json::json!({
        "spec": serde_json::to_value(&cfg.model).context("describing the model")?,
        "arch": serde_json::to_value(arch).context("describing the architecture")?,
        "dataset": cfg.data.dataset,
        "input": trainer.input_shape(),
        "classes": cfg.model.classes(),
    });
    Ok(SsmModel {
        model: description,
        layers,
        tensors,
    })
}

/// `supermask export RUN_DIR --out FILE`: writes the file (atomically) and returns its size.
pub fn export(dir: &Path, out: &Path) -> Result<usize> {
    let m = export_run(dir).with_context(|| format!("exporting {}", dir.display()))?;
    format::write_file(&m, out)?;
    Ok(std::fs::metadata(out)?.len() as usize)
}

/// `supermask export RUN_DIR --format safetensors --out FILE`: the model for other frameworks,
/// as a safetensors file (little-endian f32, header offsets as the format specifies): each
/// weight layer's `W * g(M)` as `NAME.weight` and the batch-norm tensors under their checkpoint
/// names, for inference; each masked layer's frozen `W` as `NAME.frozen_weight`, its scores
/// `NAME.scores` and thresholds `NAME.taus` (`[tau_n, tau_p]`), to continue training the mask.
/// The header's `__metadata__` holds the model description (`supermask`: the spec, the
/// architecture's steps, the dataset, input shape and classes) and the masking config
/// (`masking`, naming g), so a loader (benches/python/from_supermask.py) can rebuild the forward
/// pass, masked or not. Written atomically; returns its size.
pub fn export_safetensors(dir: &Path, out: &Path) -> Result<usize> {
    let exported = || -> Result<_> {
        let run = RunDir::open(dir)?;
        let trainer = run.trained_for_config(&Device::Cpu)?;
        let m = export_trainer(&run.config, &trainer)?;
        // What continuing to train needs: each masked layer's frozen weights, scores and
        // thresholds (the checkpoint's tensors), and the masking config naming g.
        let mut trainable = Vec::new();
        for layer in trainer.model().layers() {
            if matches!(layer, Layer::Masked(_)) {
                for (name, t) in layer.named_tensors()? {
                    let name = match name.strip_suffix(".weight") {
                        Some(stem) => format!("{stem}.frozen_weight"),
                        None => name,
                    };
                    trainable.push((name, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
                }
            }
        }
        let masking = serde_json::to_string(&run.config.masking)?;
        Ok((m, trainable, masking))
    };
    let (m, trainable, masking) =
        exported().with_context(|| format!("exporting {}", dir.display()))?;
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let le = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect();
    for l in &m.layers {
        let bytes = match &l.weights {
            LayerWeights::Ternary { magnitude, pattern } => le(&pattern
                .iter()
                .map(|&p| f32::from(p) * magnitude)
                .collect::<Vec<_>>()),
            LayerWeights::Values(v) => le(v),
        };
        named.push((format!("{}.weight", l.name), l.shape.clone(), bytes));
    }
    for (name, shape, values) in m.tensors.iter().chain(&trainable) {
        named.push((name.clone(), shape.clone(), le(values)));
    }
    let views = named
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytes,
            )?;
            Ok((name.as_str(), view))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = [
        ("supermask".to_string(), m.model.to_string()),
        ("masking".to_string(), masking),
    ]
    .into();
    let bytes = safetensors::serialize(views, Some(metadata))?;
    supermask_core::fsio::write_atomic(out, &bytes)?;
    Ok(bytes.len())
}

/// `supermask inspect FILE`: per layer shape, density, encoding and bytes.
pub fn inspect(file: &Path, w: &mut dyn Write) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let m = format::decode(&bytes).with_context(|| format!("reading {}", file.display()))?;
    let infos = format::layer_infos(&bytes)?;
    // The checksum only proves the bytes are as written: the layers must also be the
    // architecture's, as the engine needs them.
    supermask_export::Engine::new(&m).with_context(|| {
        format!(
            "{}: the layers do not fit the stored architecture",
            file.display()
        )
    })?;
    writeln!(
        w,
        "{}: {} bytes, format version {}",
        file.display(),
        bytes.len(),
        format::VERSION
    )?;
    // The architecture's steps are long (a ResNet110 has hundreds); the spec names it.
    let mut shown = m.model.clone();
    let arch = shown.as_object_mut().and_then(|o| o.remove("arch"));
    writeln!(w, "model: {shown}")?;
    if let Some(a) = arch {
        let a: Architecture =
            serde_json::from_value(a).context("the model description's `arch`")?;
        let steps = a.all_steps().len();
        writeln!(w, "architecture: input {:?}, {steps} steps", a.input)?;
    }
    writeln!(
        w,
        "{:<16} {:>20} {:>10} {:>9} {:>14} {:>10}",
        "layer", "shape", "kept", "density", "encoding", "bytes"
    )?;
    let (mut kept, mut total, mut payload) = (0usize, 0usize, 0usize);
    for i in &infos {
        let n: usize = i.shape.iter().product();
        writeln!(
            w,
            "{:<16} {:>20} {:>10} {:>8.2}% {:>14} {:>10}",
            i.name,
            format!("{:?}", i.shape),
            i.kept,
            100.0 * i.kept as f64 / n.max(1) as f64,
            i.encoding.to_string(),
            i.bytes
        )?;
        (kept, total, payload) = (kept + i.kept, total + n, payload + i.bytes);
    }
    writeln!(
        w,
        "masked weights: {total}, kept {kept} ({:.2}%); layer payloads {payload} bytes; dense \
         float32 {} bytes; this file is {:.2}% of that",
        100.0 * kept as f64 / total.max(1) as f64,
        4 * total,
        100.0 * bytes.len() as f64 / (4 * total).max(1) as f64
    )?;
    if !m.tensors.is_empty() {
        writeln!(w, "other tensors: {}", m.tensors.len())?;
    }
    Ok(())
}

/// What `supermask infer` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InferReport {
    /// Test samples.
    pub samples: usize,
    /// Test accuracy (fraction).
    pub accuracy: f64,
    /// Seconds the engine took for all samples.
    pub seconds: f64,
    /// With `--compare RUN_DIR`: the training model's predictions that differ.
    pub prediction_mismatches: Option<usize>,
    /// With `--compare RUN_DIR`: the largest `|engine - model|` over a sample's logits,
    /// relative to that sample's largest model logit magnitude.
    pub max_relative_logit_diff: Option<f64>,
}

/// `supermask infer FILE --data DIR`: the test set of the model's dataset through the engine.
pub fn infer(
    file: &Path,
    data_dir: &Path,
    batch: usize,
    compare: Option<&Path>,
) -> Result<InferReport> {
    ensure!(batch > 0, "--batch must be > 0");
    let m = format::read_file(file)?;
    let dataset = m
        .model
        .get("dataset")
        .and_then(|d| d.as_str())
        .context("the model file names no dataset")?
        .to_string();
    let engine = Engine::new(&m)?;
    let test = load_by_name(data_dir, &dataset, Split::Test)?;
    ensure!(
        test.dim == engine.input_len(),
        "the {dataset} test set has samples of {} values, the model expects {}",
        test.dim,
        engine.input_len()
    );
    let t0 = Instant::now();
    let mut logits = Vec::with_capacity(test.n * engine.classes());
    for start in (0..test.n).step_by(batch) {
        let n = batch.min(test.n - start);
        let x = &test.images[start * test.dim..(start + n) * test.dim];
        logits.extend(engine.forward(x, n)?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let c = engine.classes();
    let predict = |l: &[f32]| -> Vec<usize> {
        l.chunks_exact(c)
            .map(|r| {
                (0..c)
                    .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
                    .unwrap_or(0)
            })
            .collect()
    };
    let pred = predict(&logits);
    let correct = pred
        .iter()
        .zip(&test.labels)
        .filter(|(p, y)| **p == usize::from(**y))
        .count();
    let (mut mismatches, mut max_rel) = (None, None);
    if let Some(dir) = compare {
        let trainer = RunDir::open(dir)?.trained_for_config(&Device::Cpu)?;
        let reference = trainer.logits(&test)?;
        ensure!(
            reference.len() == logits.len(),
            "the run's model has another output size"
        );
        mismatches = Some(
            pred.iter()
                .zip(predict(&reference))
                .filter(|(a, b)| **a != *b)
                .count(),
        );
        max_rel = Some(
            logits
                .chunks_exact(c)
                .zip(reference.chunks_exact(c))
                .map(|(a, b)| {
                    let scale = b
                        .iter()
                        .fold(0.0f32, |m, v| m.max(v.abs()))
                        .max(f32::MIN_POSITIVE);
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| f64::from((x - y).abs() / scale))
                        .fold(0.0, f64::max)
                })
                .fold(0.0, f64::max),
        );
    }
    Ok(InferReport {
        samples: test.n,
        accuracy: correct as f64 / test.n.max(1) as f64,
        seconds,
        prediction_mismatches: mismatches,
        max_relative_logit_diff: max_rel,
    })
}
