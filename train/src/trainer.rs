//! The training loop of one model: batches, loss, backward, optimizer step, callbacks,
//! evaluation and metrics.

use crate::{
    callbacks::{Callback, EpochEnd, StepInfo, ThresholdUpdates},
    config::RunConfig,
    metrics::{EpochMetrics, LayerMetrics},
};
use anyhow::Context;
use candle_core::{Device, Tensor, Var};
use std::{ops::Range, time::Instant};
use supermask_core::{
    awake::KeepAwake,
    build_model, loss,
    optim::{Optimizer, PlateauState, Progress},
    tape, trainable_params, ForwardCtx, Layer, Model, Result,
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

/// A model with its optimizer state, step counter and callbacks.
pub struct Trainer {
    cfg: RunConfig,
    /// Per-sample input shape the model was built for.
    input: Vec<usize>,
    model: Box<dyn Model>,
    opt: Optimizer,
    callbacks: Vec<Box<dyn Callback>>,
    /// Global optimizer step.
    pub step: u64,
    /// Reduce-on-plateau state.
    pub plateau: PlateauState,
    /// Batches of the last epoch trained (every epoch has as many), for epoch-driven
    /// schedules.
    steps_per_epoch: u64,
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
    /// `input` (the dataset's, e.g. [`RunConfig::input_shape`]). Its only callback is
    /// [`ThresholdUpdates`] when the threshold rule updates during training.
    pub fn new(cfg: &RunConfig, input: &[usize], device: &Device) -> Result<Self> {
        let mut model = build_model(cfg.model.as_ref(), input, &cfg.masking, device, cfg.seed)?;
        for bn in model.norms_mut() {
            bn.set_momentum(cfg.train.bn_momentum)
                .context("train.bn_momentum")?;
        }
        let names = trainable_params(model.as_ref())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            input: input.to_vec(),
            opt: Optimizer::new(cfg.optimizer.clone(), names).with_path(cfg.train.kernels.path),
            callbacks: cfg
                .masking
                .threshold()
                .cloned()
                .and_then(ThresholdUpdates::new)
                .map(|c| Box::new(c) as Box<dyn Callback>)
                .into_iter()
                .collect(),
            model,
            step: 0,
            plateau: PlateauState::default(),
            steps_per_epoch: 0,
            device: device.clone(),
        })
    }

    /// [`Trainer::new`] for the input shape of the config's dataset (loading a run without
    /// its data: export, analysis).
    pub fn for_config(cfg: &RunConfig, device: &Device) -> Result<Self> {
        Self::new(cfg, &cfg.input_shape()?, device)
    }

    /// Adds a callback; callbacks run in the order they were added.
    pub fn add_callback(&mut self, callback: Box<dyn Callback>) {
        self.callbacks.push(callback);
    }

    /// The names of the callbacks, in order.
    pub fn callback_names(&self) -> Vec<&str> {
        self.callbacks.iter().map(|c| c.name()).collect()
    }

    /// The run's config.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
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
        self.cfg.optimizer.lr()
            * self.cfg.schedule.factor(self.progress())
            * self.plateau.factor
            * self.cfg.warmup.factor(self.step)
    }

    /// Where training is, for the schedule.
    fn progress(&self) -> Progress {
        Progress {
            step: self.step,
            steps_per_epoch: self.steps_per_epoch,
            epochs: self.cfg.train.epochs,
        }
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
        anyhow::ensure!(
            !self.cfg.data.augment || data.shape.len() == 3,
            "data.augment = true pads, crops and flips images, but the samples have shape {:?}; \
             augmentation needs [channels, height, width] images",
            data.shape
        );
        Ok(())
    }

    fn batch(
        &self,
        data: &Dataset,
        idx: &[usize],
        augment: Option<u64>,
    ) -> Result<(Tensor, Tensor)> {
        let (x, y) = host_batch(data, idx, augment)?;
        batch_tensors(x, y, &self.input, &self.device)
    }

    /// Runs `f` on every callback with the model (the callbacks are taken out for the call).
    fn each_callback(
        &mut self,
        mut f: impl FnMut(&mut dyn Callback, &mut dyn Model) -> Result<()>,
    ) -> Result<()> {
        let mut callbacks = std::mem::take(&mut self.callbacks);
        let result = callbacks.iter_mut().try_for_each(|c| {
            let name = c.name().to_string();
            f(c.as_mut(), self.model.as_mut()).with_context(|| format!("callback `{name}`"))
        });
        self.callbacks = callbacks;
        result
    }

    /// One optimizer step on the batch `(x, y)`: forward, loss, backward, update. Returns the
    /// batch's mean loss and the logits (detached). `self.step` is the count before it.
    fn train_step(&mut self, x: &Tensor, y: &Tensor, epoch: usize) -> Result<(f64, Tensor)> {
        let ctx = ForwardCtx::train(self.step, self.cfg.seed, self.cfg.train.kernels);
        // The fused trunk's backward runs from the tape, without candle's bookkeeping.
        let (logits, tape) = tape::record(|| self.model.forward_t(x, &ctx))?;
        let loss = self.cfg.loss.loss(&logits, y)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        anyhow::ensure!(
            lv.is_finite(),
            "the training loss became {lv} at epoch {} step {}; lower optimizer.lr or check \
             the initialization",
            epoch + 1,
            self.step + 1
        );
        let mut grads = loss.backward()?;
        tape.backward(&mut grads)?;
        let named = trainable_params(self.model.as_ref());
        let params: Vec<&Var> = named.iter().map(|(_, v)| *v).collect();
        let factor = self.cfg.schedule.factor(self.progress());
        let lr_factor = factor * self.plateau.factor * self.cfg.warmup.factor(self.step);
        self.opt.step(&params, &grads, lr_factor, factor)?;
        Ok((lv, logits.detach()))
    }

    /// Trains one epoch (0-based `epoch` selects the data order), calling the callbacks'
    /// `on_step` after every step and `on_train_end` after the last. Fails on a non-finite
    /// loss.
    pub fn train_epoch(&mut self, data: &Dataset, epoch: usize) -> Result<PassStats> {
        let order = epoch_order(data.n, self.cfg.seed, epoch, self.cfg.data.shuffle);
        let batches: Vec<&[usize]> = order.chunks(self.cfg.data.batch_size).collect();
        self.steps_per_epoch = batches.len() as u64;
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        // rayon's other threads spin for work through the step's serial stretches.
        let awake = KeepAwake::new();
        // The next batch's samples are copied (and augmented) on another thread while a step
        // runs ([`prefetched`]); the tensors are made on this one (on a GPU, a copy from it).
        let (seed, augment) = (self.cfg.seed, self.cfg.data.augment);
        let make = |i: usize| {
            let augment = augment
                .then(|| supermask_core::rng::derive_seed(seed, &[0xA06, epoch as u64, i as u64]));
            host_batch(data, batches[i], augment)
        };
        prefetched(batches.len(), make, |i, (x, y)| {
            awake.keep();
            let (x, y) = batch_tensors(x, y, &self.input, &self.device)?;
            let (lv, logits) = self.train_step(&x, &y, epoch)?;
            self.step += 1;
            let info = StepInfo {
                epoch,
                batch: i + 1,
                batches: batches.len(),
                step: self.step,
                loss: lv,
            };
            self.each_callback(|c, model| c.on_step(model, &info))?;
            loss_sum += lv * batches[i].len() as f64;
            correct += loss::correct(&logits, &y)?;
            Ok(())
        })?;
        self.each_callback(|c, model| c.on_train_end(model, epoch))?;
        Ok(PassStats {
            loss: loss_sum / data.n as f64,
            acc: correct as f64 / data.n as f64,
        })
    }

    /// Trains the 0-based epochs `epochs` of a run of `total_epochs`: per epoch,
    /// [`Trainer::train_epoch`], the schedule's epoch end, evaluation on `validation` (when
    /// given) and `test`, the epoch's
    /// [`EpochMetrics`] appended to `history`, then the callbacks' `on_epoch_end`. The first
    /// error (a non-finite loss, a callback such as the divergence guard) stops it; `history`
    /// then holds the epochs that finished.
    pub fn fit(
        &mut self,
        train: &Dataset,
        validation: Option<&Dataset>,
        test: &Dataset,
        epochs: Range<usize>,
        total_epochs: usize,
        history: &mut Vec<EpochMetrics>,
    ) -> Result<()> {
        for epoch in epochs {
            let t0 = Instant::now();
            let train_stats = self
                .train_epoch(train, epoch)
                .with_context(|| format!("training stopped in epoch {}", epoch + 1))?;
            let seconds = t0.elapsed().as_secs_f64();
            self.end_epoch(train_stats.loss);
            let t1 = Instant::now();
            let val_stats = validation.map(|v| self.evaluate(v)).transpose()?;
            let test_stats = self.evaluate(test)?;
            let (remaining, layers) = self.layer_metrics()?;
            history.push(EpochMetrics {
                epoch: epoch + 1,
                step: self.step,
                lr: self.lr(),
                train_loss: train_stats.loss,
                train_acc: train_stats.acc,
                test_loss: test_stats.loss,
                test_acc: test_stats.acc,
                val_loss: val_stats.as_ref().map(|s| s.loss),
                val_acc: val_stats.as_ref().map(|s| s.acc),
                remaining,
                seconds,
                eval_seconds: t1.elapsed().as_secs_f64(),
                layers,
            });
            let end = EpochEnd {
                metrics: history.last().expect("pushed above"),
                history,
                epochs: total_epochs,
                classes: test.classes,
            };
            let mut callbacks = std::mem::take(&mut self.callbacks);
            let result = callbacks.iter_mut().try_for_each(|c| {
                let name = c.name().to_string();
                c.on_epoch_end(self, &end)
                    .with_context(|| format!("{name} after epoch {}", epoch + 1))
            });
            self.callbacks = callbacks;
            result?;
        }
        Ok(())
    }

    /// Loss and accuracy on `data` in evaluation mode.
    pub fn evaluate(&self, data: &Dataset) -> Result<PassStats> {
        let order: Vec<usize> = (0..data.n).collect();
        let batches: Vec<&[usize]> = order.chunks(self.cfg.data.test_batch_size).collect();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let awake = KeepAwake::new();
        let make = |i: usize| host_batch(data, batches[i], None);
        prefetched(batches.len(), make, |i, (x, y)| {
            awake.keep();
            let (x, y) = batch_tensors(x, y, &self.input, &self.device)?;
            let logits = self.model.forward_t(&x, &self.eval_ctx())?.detach();
            let n = batches[i].len() as f64;
            loss_sum += self.cfg.loss.loss(&logits, &y)?.to_scalar::<f32>()? as f64 * n;
            correct += loss::correct(&logits, &y)?;
            Ok(())
        })?;
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

/// Runs `f(i, make(i))` for `i` in `0..n` in order, with `make(i + 1)` running on another of
/// rayon's threads (when one is free) while `f` takes batch `i`: a batch's samples lie
/// scattered over the dataset, and on the calling thread their copy was 2.5% of the signed FCN
/// step, while the step's serial stretches leave the other threads idle. What `make` returns
/// does not depend on the thread that runs it. The first error (of `f` first) stops it.
fn prefetched<T: Send>(
    n: usize,
    make: impl Fn(usize) -> Result<T> + Sync,
    mut f: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let mut next = (n > 0).then(|| make(0)).transpose()?;
    for i in 0..n {
        let item = next.take().context("the prefetched batch is missing")?;
        let mut fetched = None;
        let done = rayon::in_place_scope(|s| {
            if i + 1 < n {
                s.spawn(|_| fetched = Some(make(i + 1)));
            }
            f(i, item)
        });
        done?;
        next = fetched.transpose()?;
    }
    Ok(())
}

/// `data`'s samples `idx` as `(images, labels)`, padded, cropped and flipped with the seed
/// `augment` when given.
fn host_batch(data: &Dataset, idx: &[usize], augment: Option<u64>) -> Result<(Vec<f32>, Vec<u32>)> {
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
    Ok((x, y))
}

/// A batch's images (samples of shape `input`) and labels as tensors on `device`.
fn batch_tensors(
    x: Vec<f32>,
    y: Vec<u32>,
    input: &[usize],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = y.len();
    let mut dims = vec![n];
    dims.extend(input);
    let x = Tensor::from_vec(x, dims.as_slice(), device)?;
    let y = Tensor::from_vec(y, n, device)?;
    Ok((x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prefetched` over `n` items on a 2-thread pool, with `make(i) = i * 10` (an error
    /// at `make_fails`) and `f` failing at `f_fails`; returns what `f` saw and the result.
    fn run(n: usize, make_fails: Option<usize>, f_fails: Option<usize>) -> (Vec<usize>, String) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let make = |i: usize| {
                anyhow::ensure!(Some(i) != make_fails, "make {i} failed");
                Ok(i * 10)
            };
            let mut seen = Vec::new();
            let r = prefetched(n, make, |i, v| {
                anyhow::ensure!(Some(i) != f_fails, "f {i} failed");
                seen.push(i * 1000 + v);
                Ok(())
            });
            (seen, r.err().map_or("ok".into(), |e| e.to_string()))
        })
    }

    #[test]
    fn prefetched_items_reach_f_in_order_and_errors_stop_it() {
        assert_eq!(run(0, None, None), (vec![], "ok".into()));
        assert_eq!(run(4, None, None), (vec![0, 1010, 2020, 3030], "ok".into()));
        // `make(2)` fails while `f(1)` runs: `f(1)` still completes, then the error ends it.
        assert_eq!(
            run(4, Some(2), None),
            (vec![0, 1010], "make 2 failed".into())
        );
        // `f`'s error comes first, although `make(2)` ran (and failed) beside it.
        assert_eq!(run(4, Some(2), Some(1)), (vec![0], "f 1 failed".into()));
        assert_eq!(run(4, Some(0), None), (vec![], "make 0 failed".into()));
    }
}
