//! `supermask ablate DIR`: the sanity checks of the lottery-ticket literature (Frankle et al.
//! 2021, "Pruning Neural Networks at Initialization: Why are We Missing the Mark?"; Zhou et al.
//! 2019) on trained masks. Every finished run under DIR is evaluated on its test set with its
//! trained mask and three ablations of it:
//!
//! - **shuffled**: each masked layer's mask values permuted at random within the layer (its
//!   counts of -1, 0 and +1 kept);
//! - **redrawn**: the frozen weights drawn again from the same initializer with another seed,
//!   the trained mask kept;
//! - **random**: each entry of each masked layer drawn independently as -1, 0 or +1 with the
//!   layer's trained shares.
//!
//! Each ablation's effective weights go through the inference engine (the `.ssm` export's
//! model with float weights), so every mask plugin is ablated the same way. Draws are seeded
//! from the run's seed. Writes `ablation.csv` and `ablation.md` (mean and 5-95% band over each
//! group's seeds); `supermask report` includes `ablation.md` when the directory holds it.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use std::{fmt::Write as _, path::Path};
use supermask_analysis::{stats::Band, study::load_groups};
use supermask_core::{fsio::write_atomic, rng::derive_seed, Layer};
use supermask_datasets::{load_by_name, Dataset, Split};
use supermask_export::{Engine, LayerWeights, SsmModel};
use supermask_train::{provenance::data_root_for, rundir::RunDir, Trainer};

/// The evaluations of one run: trained mask, then each ablation (test accuracy, fractions).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunAblation {
    /// The run directory's name.
    pub run: String,
    /// Its group's label.
    pub group: String,
    /// Seed.
    pub seed: u64,
    /// The trained mask.
    pub trained: f64,
    /// Masks permuted within each layer.
    pub shuffled: f64,
    /// Weights redrawn, masks kept.
    pub redrawn: f64,
    /// Random masks at the layers' shares.
    pub random: f64,
}

/// One masked layer's frozen weights and trained mask, as flat vectors.
struct MaskedParts {
    index: usize,
    weight: Vec<f32>,
    mask: Vec<f32>,
    mask_fn: std::sync::Arc<dyn supermask_core::MaskFn>,
}

impl MaskedParts {
    /// The effective weight of frozen weights `w` under mask values `g`: `w * g`, or, for a
    /// mask that rescales the weights it keeps (biprop), `W_b(w, g) * g`.
    fn effective(&self, w: &[f32], g: &[f32]) -> Result<Vec<f32>> {
        let (wt, gt) = (
            candle_core::Tensor::new(w, &Device::Cpu)?,
            candle_core::Tensor::new(g, &Device::Cpu)?,
        );
        let scaled = self.mask_fn.scaled_weight(&wt, &gt)?;
        let w = match &scaled {
            Some(s) => s.to_vec1::<f32>()?,
            None => w.to_vec(),
        };
        Ok(w.iter().zip(g).map(|(w, g)| w * g).collect())
    }
}

fn masked_parts(trainer: &Trainer) -> Result<Vec<MaskedParts>> {
    let mut out = Vec::new();
    for (index, layer) in trainer.model().layers().into_iter().enumerate() {
        if let Layer::Masked(l) = layer {
            out.push(MaskedParts {
                index,
                weight: l.weight()?.flatten_all()?.to_vec1::<f32>()?,
                mask: l
                    .eval_mask()?
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
                mask_fn: l.mask_fn().clone(),
            });
        }
    }
    Ok(out)
}

/// Test accuracy of `base` with each masked layer's effective weight replaced by
/// `weights[i] * masks[i]`.
fn accuracy_with(
    base: &SsmModel,
    parts: &[MaskedParts],
    weights: &[&[f32]],
    masks: &[Vec<f32>],
    test: &Dataset,
) -> Result<f64> {
    let mut m = base.clone();
    for ((p, w), g) in parts.iter().zip(weights).zip(masks) {
        m.layers[p.index].weights = LayerWeights::Values(p.effective(w, g)?);
    }
    let engine = Engine::new(&m)?;
    let (c, mut correct) = (engine.classes(), 0usize);
    for start in (0..test.n).step_by(1000) {
        let n = 1000.min(test.n - start);
        let x = &test.images[start * test.dim..(start + n) * test.dim];
        let logits = engine.forward(x, n)?;
        for (row, &y) in logits.chunks_exact(c).zip(&test.labels[start..start + n]) {
            let pred = (0..c)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            correct += usize::from(pred == usize::from(y));
        }
    }
    Ok(correct as f64 / test.n as f64)
}

/// The trained run in `dir` and its three ablations on its test set (data from `data`, else
/// the root the run recorded).
pub fn ablate_run(dir: &Path, data: Option<&Path>, group: &str) -> Result<RunAblation> {
    let run = RunDir::open(dir)?;
    let cfg = &run.config;
    let trainer = run.trained_for_config(&Device::Cpu)?;
    let base = crate::export::export_trainer(cfg, &trainer)?;
    let parts = masked_parts(&trainer)?;
    ensure!(
        !parts.is_empty(),
        "{}: a dense run has no mask to ablate",
        dir.display()
    );
    let root = data_root_for(dir, data.map(Path::to_path_buf))?;
    let test = load_by_name(&root, &cfg.data.dataset, Split::Test)
        .with_context(|| format!("{}: the test set", dir.display()))?;
    let trained_masks: Vec<Vec<f32>> = parts.iter().map(|p| p.mask.clone()).collect();
    let weights: Vec<&[f32]> = parts.iter().map(|p| p.weight.as_slice()).collect();
    let trained = accuracy_with(&base, &parts, &weights, &trained_masks, &test)?;

    let rng = |what: u64, layer: usize| {
        rand::rngs::StdRng::seed_from_u64(derive_seed(cfg.seed, &[0xAB1A7E, what, layer as u64]))
    };
    let shuffled: Vec<Vec<f32>> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut m = p.mask.clone();
            m.shuffle(&mut rng(1, i));
            m
        })
        .collect();
    let random: Vec<Vec<f32>> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = p.mask.len() as f64;
            let neg = p.mask.iter().filter(|&&v| v < 0.0).count() as f64 / n;
            let pos = p.mask.iter().filter(|&&v| v > 0.0).count() as f64 / n;
            let mut r = rng(2, i);
            (0..p.mask.len())
                .map(|_| {
                    let u: f64 = r.random();
                    if u < neg {
                        -1.0
                    } else if u < neg + pos {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    // The weights a run of another seed draws: the same initializers, another stream.
    let mut other = cfg.clone();
    other.seed = derive_seed(cfg.seed, &[0xAB1A7E, 3]);
    let fresh = Trainer::new(&other, &cfg.input_shape()?, &Device::Cpu)?;
    let fresh_parts = masked_parts(&fresh)?;
    let fresh_weights: Vec<&[f32]> = fresh_parts.iter().map(|p| p.weight.as_slice()).collect();
    Ok(RunAblation {
        run: dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        group: group.to_string(),
        seed: cfg.seed,
        trained,
        shuffled: accuracy_with(&base, &parts, &weights, &shuffled, &test)?,
        redrawn: accuracy_with(&base, &parts, &fresh_weights, &trained_masks, &test)?,
        random: accuracy_with(&base, &parts, &weights, &random, &test)?,
    })
}

fn band_text(b: Option<Band>) -> String {
    b.map_or("n/a".to_string(), |b| {
        format!("{:.2} [{:.2}, {:.2}]", b.mean, b.q05, b.q95)
    })
}

/// `supermask ablate DIR`: every finished masked run under `dir`; writes `ablation.csv` and
/// `ablation.md` into `out` and returns the markdown.
pub fn ablate(dir: &Path, out: &Path, data: Option<&Path>) -> Result<String> {
    let (groups, _) = load_groups(dir)?;
    let mut rows = Vec::new();
    for g in groups.iter().filter(|g| g.masked()) {
        for r in &g.runs {
            tracing::info!("ablating {}", r.dir.display());
            rows.push(ablate_run(&r.dir, data, &g.label)?);
        }
    }
    ensure!(
        !rows.is_empty(),
        "{} holds no finished masked run to ablate",
        dir.display()
    );
    let mut csv = String::from("run,group,seed,trained,shuffled,redrawn,random\n");
    for r in &rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            r.run, r.group, r.seed, r.trained, r.shuffled, r.redrawn, r.random
        );
    }
    let mut md = String::from(
        "Test accuracy % with the trained masks and three ablations of them (mean [5%, 95% \
         quantile] over seeds): each layer's mask permuted within the layer (shuffled), the \
         frozen weights redrawn from their initializer with another seed (redrawn), and masks \
         drawn at random at each layer's -1/0/+1 shares (random).\n\n\
         | group | n | trained | shuffled | redrawn | random |\n|---|---|---|---|---|---|\n",
    );
    let mut labels: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
    labels.dedup();
    for label in labels {
        let of: Vec<&RunAblation> = rows.iter().filter(|r| r.group == label).collect();
        let band = |f: fn(&RunAblation) -> f64| {
            Band::of(&of.iter().map(|r| 100.0 * f(r)).collect::<Vec<_>>())
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            of.len(),
            band_text(band(|r| r.trained)),
            band_text(band(|r| r.shuffled)),
            band_text(band(|r| r.redrawn)),
            band_text(band(|r| r.random))
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("ablation.csv"), csv.as_bytes())?;
    write_atomic(&out.join("ablation.md"), md.as_bytes())?;
    Ok(md)
}
