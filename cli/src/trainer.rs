//! The training loop of one model: batches, loss, backward, optimizer, thresholds, metrics.

use crate::{config::RunConfig, metrics::LayerMetrics};
use anyhow::Context;
use candle_core::{Device, Tensor, Var};
use std::sync::Arc;
use supermask_core::{
    build_model, loss,
    model::masked_layers_mut,
    optim::{Optimizer, PlateauState},
    trainable_params, ForwardCtx, Layer, Model, Result, Threshold, UpdateEvery,
};
use supermask_datasets::{augment_pad_crop_flip, epoch_order, Dataset};

/// Loss and accuracy over a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassStats {
    /// Mean loss per sample.
    pub loss: f64,
    /// Accuracy (fraction).
    pub acc: f64,
}

/// A model with its optimizer state and step counter.
pub struct Trainer {
    cfg: RunConfig,
    /// Per-sample input shape the model was built for.
    input: Vec<usize>,
    model: Box<dyn Model>,
    opt: Optimizer,
    threshold: Option<Arc<dyn Threshold>>,
    /// Global optimizer step.
    pub step: u64,
    /// Reduce-on-plateau state.
    pub plateau: PlateauState,
    device: Device,
}

impl Trainer {
    /// The evaluation forward context (deterministic masks, the run's kernels).
    fn eval_ctx(&self) -> ForwardCtx {
        ForwardCtx {
            kernels: self.cfg.train.kernels,
            ..ForwardCtx::eval()
        }
    }

    /// Builds and initializes the model of `cfg` on `device` for per-sample inputs of shape
    /// `input` (the dataset's, e.g. [`RunConfig::input_shape`]).
    pub fn new(cfg: &RunConfig, input: &[usize], device: &Device) -> Result<Self> {
        let model = build_model(cfg.model.as_ref(), input, &cfg.masking, device, cfg.seed)?;
        let names = trainable_params(model.as_ref())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            input: input.to_vec(),
            opt: Optimizer::new(cfg.optimizer.clone(), names).with_path(cfg.train.kernels.path),
            threshold: cfg.masking.threshold().cloned(),
            model,
            step: 0,
            plateau: PlateauState::default(),
            device: device.clone(),
        })
    }

    /// [`Trainer::new`] for the input shape of the config's dataset (loading a run without
    /// its data: export, analysis).
    pub fn for_config(cfg: &RunConfig, device: &Device) -> Result<Self> {
        Self::new(cfg, &cfg.input_shape()?, device)
    }

    /// Per-sample input shape the model was built for.
    pub fn input_shape(&self) -> &[usize] {
        &self.input
    }

    /// The model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// Mutable model (checkpoint loading).
    pub fn model_mut(&mut self) -> &mut dyn Model {
        self.model.as_mut()
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }

    /// Mutable optimizer (checkpoint loading).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.opt
    }

    /// Current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.optimizer.lr() * self.cfg.schedule.factor(self.step) * self.plateau.factor
    }

    /// Epoch-end bookkeeping of the schedule (reduce-on-plateau watches the training loss).
    pub fn end_epoch(&mut self, train_loss: f64) {
        self.cfg.schedule.end_epoch(&mut self.plateau, train_loss);
    }

    /// Checks that the dataset fits the model (sample shape, classes).
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        anyhow::ensure!(
            data.shape == self.input && data.dim == self.input.iter().product::<usize>(),
            "the dataset's samples have shape {:?} ({} values) but the model was built for {:?}",
            data.shape,
            data.dim,
            self.input
        );
        anyhow::ensure!(
            data.classes <= self.cfg.model.classes(),
            "the dataset has {} classes but the model outputs {}",
            data.classes,
            self.cfg.model.classes()
        );
        Ok(())
    }

    fn batch(
        &self,
        data: &Dataset,
        idx: &[usize],
        augment: Option<u64>,
    ) -> Result<(Tensor, Tensor)> {
        let (mut x, y) = data.gather(idx);
        if let Some(seed) = augment {
            let [c, h, w] = data.shape[..] else {
                anyhow::bail!(
                    "data.augment needs images of shape [c, h, w], got {:?}",
                    data.shape
                )
            };
            augment_pad_crop_flip(&mut x, idx.len(), c, h, w, 4, seed);
        }
        let mut dims = vec![idx.len()];
        dims.extend(&self.input);
        let x = Tensor::from_vec(x, dims.as_slice(), &self.device)?;
        let y = Tensor::from_vec(y, idx.len(), &self.device)?;
        Ok((x, y))
    }

    /// Recomputes thresholds if the rule updates at `when`.
    fn update_thresholds(&mut self, when: UpdateEvery) -> Result<()> {
        let Some(th) = self.threshold.clone() else {
            return Ok(());
        };
        if th.every() != when {
            return Ok(());
        }
        let mut masked = masked_layers_mut(self.model.as_mut());
        let scores: Vec<Tensor> = masked
            .iter()
            .map(|m| m.scores().as_tensor().detach())
            .collect();
        let current: Vec<_> = masked.iter().map(|m| m.taus()).collect();
        let taus = th.update(&scores, &current)?;
        for (m, t) in masked.iter_mut().zip(taus) {
            m.set_taus(t)?;
        }
        Ok(())
    }

    /// Trains one epoch (0-based `epoch` selects the data order); `on_batch(done, total,
    /// loss)` is called after every step. Fails on a non-finite loss.
    pub fn train_epoch(
        &mut self,
        data: &Dataset,
        epoch: usize,
        on_batch: &mut dyn FnMut(usize, usize, f64),
    ) -> Result<PassStats> {
        let order = epoch_order(data.n, self.cfg.seed, epoch, self.cfg.data.shuffle);
        let batches: Vec<&[usize]> = order.chunks(self.cfg.data.batch_size).collect();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (i, idx) in batches.iter().enumerate() {
            let augment = self.cfg.data.augment.then(|| {
                supermask_core::rng::derive_seed(self.cfg.seed, &[0xA06, epoch as u64, i as u64])
            });
            let (x, y) = self.batch(data, idx, augment)?;
            let ctx = ForwardCtx::train(self.step, self.cfg.seed, self.cfg.train.kernels);
            let logits = self.model.forward_t(&x, &ctx)?;
            let loss = self.cfg.loss.loss(&logits, &y)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            anyhow::ensure!(
                lv.is_finite(),
                "the training loss became {lv} at epoch {} step {}; lower optimizer.lr or check \
                 the initialization",
                epoch + 1,
                self.step + 1
            );
            let grads = loss.backward()?;
            let named = trainable_params(self.model.as_ref());
            let params: Vec<&Var> = named.iter().map(|(_, v)| *v).collect();
            let factor = self.cfg.schedule.factor(self.step);
            self.opt
                .step(&params, &grads, factor * self.plateau.factor, factor)?;
            self.step += 1;
            self.update_thresholds(UpdateEvery::Step)?;
            loss_sum += lv * idx.len() as f64;
            correct += loss::correct(&logits.detach(), &y)?;
            on_batch(i + 1, batches.len(), lv);
        }
        self.update_thresholds(UpdateEvery::Epoch)?;
        Ok(PassStats {
            loss: loss_sum / data.n as f64,
            acc: correct as f64 / data.n as f64,
        })
    }

    /// Loss and accuracy on `data` in evaluation mode.
    pub fn evaluate(&self, data: &Dataset) -> Result<PassStats> {
        let order: Vec<usize> = (0..data.n).collect();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for idx in order.chunks(self.cfg.data.test_batch_size) {
            let (x, y) = self.batch(data, idx, None)?;
            let logits = self.model.forward_t(&x, &self.eval_ctx())?.detach();
            loss_sum +=
                self.cfg.loss.loss(&logits, &y)?.to_scalar::<f32>()? as f64 * idx.len() as f64;
            correct += loss::correct(&logits, &y)?;
        }
        anyhow::ensure!(data.n > 0, "empty evaluation set");
        Ok(PassStats {
            loss: loss_sum / data.n as f64,
            acc: correct as f64 / data.n as f64,
        })
    }

    /// The evaluation-mode logits `[n, classes]` of all of `data`, in order.
    pub fn logits(&self, data: &Dataset) -> Result<Vec<f32>> {
        let order: Vec<usize> = (0..data.n).collect();
        let mut out = Vec::with_capacity(data.n * data.classes);
        for idx in order.chunks(self.cfg.data.test_batch_size) {
            let (x, _) = self.batch(data, idx, None)?;
            let logits = self.model.forward_t(&x, &self.eval_ctx())?.detach();
            out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Mask statistics per layer and the overall remaining-weight ratio.
    pub fn layer_metrics(&self) -> Result<(f64, Vec<LayerMetrics>)> {
        let (mut kept, mut total) = (0usize, 0usize);
        let mut out = Vec::new();
        for layer in self.model.layers() {
            let [neg, zero, pos] = layer
                .mask_counts()
                .with_context(|| layer.name().to_string())?;
            let n = neg + zero + pos;
            if let Layer::Masked(_) = layer {
                kept += neg + pos;
                total += n;
            }
            let taus = match layer {
                Layer::Masked(m) => Some(m.taus()),
                Layer::Dense(_) => None,
            };
            out.push(LayerMetrics {
                name: layer.name().to_string(),
                remaining: (neg + pos) as f64 / n as f64,
                neg: neg as f64 / n as f64,
                zero: zero as f64 / n as f64,
                pos: pos as f64 / n as f64,
                weights: n,
                tau_n: taus.map(|t| t.neg),
                tau_p: taus.map(|t| t.pos),
            });
        }
        let remaining = if total == 0 {
            1.0
        } else {
            kept as f64 / total as f64
        };
        Ok((remaining, out))
    }
}
