//! The one description of an architecture: the steps of the forward pass over one sample, with
//! every weight layer's and batch norm's name and shape.
//!
//! A model spec ([`crate::ModelSpec::architecture`]) writes it; training builds its network
//! from it ([`crate::network::Network`], whose layers give the checkpoint's tensor names and
//! the per-layer metrics), the exported model file stores it, and the inference engine runs
//! it. Nothing downstream re-derives an architecture from a model's type name.
//!
//! In JSON and TOML a step is a table tagged by `op`, e.g. `{"op": "conv", "name": "conv1",
//! "c_in": 3, "c_out": 64, "k": 3, "stride": 1, "padding": 1}`; `residual` holds two step
//! lists whose outputs are added (an empty `shortcut` is the identity).

use crate::{config::BnMode, layer::LayerSpec, Result};
use anyhow::{ensure, Context};
use serde::{Deserialize, Serialize};

/// One step of the forward pass (per sample; the batch dimension is implied).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// A linear weight layer `[outputs, inputs]` without bias.
    Linear {
        /// Path-style name (`fc1`): its parameters are `fc1.scores`, `fc1.weight`.
        name: String,
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
    /// A `k x k` convolution weight layer `[c_out, c_in, k, k]` without bias.
    Conv {
        /// Path-style name (`s1.b1.conv1`).
        name: String,
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
    /// Batch norm over the channels ([`crate::norm::BatchNorm`]).
    BatchNorm {
        /// Path-style name (`stem.bn`).
        name: String,
        /// Channels.
        channels: usize,
        /// Behaviour.
        mode: BnMode,
    },
    /// ELU with the architecture's `elu_alpha`.
    Elu,
    /// Max-pooling with `k x k` windows; padded positions never win; sizes round down.
    MaxPool {
        /// Window size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// `[c, h, w]` -> `[c h w]`.
    Flatten,
    /// `[c, h, w]` -> `[c]`, the mean over each row, then over the rows.
    GlobalAvgPool,
    /// `main(x) + shortcut(x)`; an empty `shortcut` is the identity.
    Residual {
        /// The main path.
        main: Vec<Step>,
        /// The shortcut path.
        shortcut: Vec<Step>,
    },
}

impl Step {
    /// The weight layer of a `linear` or `conv` step.
    pub fn layer_spec(&self) -> Result<Option<LayerSpec>> {
        Ok(match self {
            Step::Linear {
                name,
                inputs,
                outputs,
            } => Some(LayerSpec::linear(name, *inputs, *outputs)?),
            Step::Conv {
                name,
                c_in,
                c_out,
                k,
                stride,
                padding,
            } => Some(LayerSpec::conv2d(
                name, *c_in, *c_out, *k, *stride, *padding,
            )?),
            _ => None,
        })
    }
}

/// A model's forward pass as data: per-sample input shape, the ELU's alpha and the steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Per-sample input shape (`[784]`, `[1, 28, 28]`, `[3, 32, 32]`).
    pub input: Vec<usize>,
    /// Alpha of every [`Step::Elu`].
    pub elu_alpha: f64,
    /// The forward pass.
    pub steps: Vec<Step>,
}

/// Every step of `steps`, depth first (a residual, then its main path, then its shortcut).
fn depth_first<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
    for s in steps {
        out.push(s);
        if let Step::Residual { main, shortcut } = s {
            depth_first(main, out);
            depth_first(shortcut, out);
        }
    }
}

/// The per-sample shape after `steps` from `shape`, checking every step; errors name the
/// layer (or the step's position).
fn shape_after(steps: &[Step], mut shape: Vec<usize>) -> Result<Vec<usize>> {
    for (i, s) in steps.iter().enumerate() {
        shape = match s {
            Step::Linear { .. } | Step::Conv { .. } => s
                .layer_spec()?
                .expect("a weight step has a layer")
                .output_shape(&shape)?,
            Step::BatchNorm { name, channels, .. } => {
                ensure!(
                    shape.first() == Some(channels),
                    "{name}: batch norm of {channels} channels after an output of shape {shape:?}"
                );
                shape
            }
            Step::Elu => shape,
            Step::MaxPool { k, stride, padding } => {
                ensure!(
                    padding < k,
                    "step {}: a {k}x{k} max-pool's padding {padding} must be smaller than its \
                     window",
                    i + 1
                );
                ensure!(
                    shape.len() == 3
                        && *k > 0
                        && *stride > 0
                        && shape[1] + 2 * padding >= *k
                        && shape[2] + 2 * padding >= *k,
                    "step {}: a {k}x{k} max-pool needs an image of at least its window, got \
                     {shape:?}",
                    i + 1
                );
                let out = |x: usize| (x + 2 * padding - k) / stride + 1;
                vec![shape[0], out(shape[1]), out(shape[2])]
            }
            Step::Flatten => vec![shape.iter().product()],
            Step::GlobalAvgPool => {
                ensure!(
                    shape.len() == 3,
                    "step {}: global average pooling needs an image, got {shape:?}",
                    i + 1
                );
                vec![shape[0]]
            }
            Step::Residual { main, shortcut } => {
                let m = shape_after(main, shape.clone())?;
                let s = shape_after(shortcut, shape)?;
                ensure!(
                    m == s,
                    "residual at step {}: main path {m:?} != shortcut {s:?}",
                    i + 1
                );
                m
            }
        };
        let values = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_VALUES_PER_SAMPLE);
        if values.is_none() {
            let what = match s.layer_spec()? {
                Some(l) => format!("layer {}", l.name),
                None => format!("step {}", i + 1),
            };
            anyhow::bail!(
                "{what}: an output of shape {shape:?} per sample is beyond what any model \
                 computes (at most {MAX_VALUES_PER_SAMPLE} values)"
            );
        }
    }
    Ok(shape)
}

/// Most values one sample's activation may hold after any step (2^28, 1 GiB of f32; the
/// largest preset's is ResNet20 x3's first stage, 49,152): bounds the engine's and the
/// trainer's buffers whatever a file or config claims.
pub const MAX_VALUES_PER_SAMPLE: usize = 1 << 28;

impl Architecture {
    /// Every step, depth first (a residual, then its main path, then its shortcut).
    pub fn all_steps(&self) -> Vec<&Step> {
        let mut out = Vec::new();
        depth_first(&self.steps, &mut out);
        out
    }

    /// The weight layers, depth first: the order of [`crate::Model::layers`], checkpoints
    /// and metrics.
    pub fn layers(&self) -> Result<Vec<LayerSpec>> {
        self.all_steps()
            .into_iter()
            .filter_map(|s| s.layer_spec().transpose())
            .collect()
    }

    /// The batch norms `(name, channels, mode)`, depth first.
    pub fn norms(&self) -> Vec<(&str, usize, BnMode)> {
        self.all_steps()
            .into_iter()
            .filter_map(|s| match s {
                Step::BatchNorm {
                    name,
                    channels,
                    mode,
                } => Some((name.as_str(), *channels, *mode)),
                _ => None,
            })
            .collect()
    }

    /// Checks every step against the shape reaching it and the names for uniqueness; the
    /// output shape (`[classes]` for a classifier).
    pub fn output_shape(&self) -> Result<Vec<usize>> {
        ensure!(
            !self.input.is_empty() && self.input.iter().all(|&d| d > 0),
            "the architecture's input shape {:?} has an empty dimension",
            self.input
        );
        ensure!(
            self.input
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .is_some_and(|n| n <= MAX_VALUES_PER_SAMPLE),
            "the architecture's input shape {:?} holds more than {MAX_VALUES_PER_SAMPLE} values",
            self.input
        );
        ensure!(
            self.elu_alpha.is_finite(),
            "the architecture's elu_alpha is {}",
            self.elu_alpha
        );
        let mut names: Vec<&str> = self.layers_and_norm_names();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            anyhow::bail!("two layers are named {}: layer names must be unique", w[0]);
        }
        shape_after(&self.steps, self.input.clone()).context("checking the architecture")
    }

    fn layers_and_norm_names(&self) -> Vec<&str> {
        self.all_steps()
            .into_iter()
            .filter_map(|s| match s {
                Step::Linear { name, .. }
                | Step::Conv { name, .. }
                | Step::BatchNorm { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Values per input sample.
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(name: &str, c_in: usize, c_out: usize, k: usize, stride: usize) -> Step {
        Step::Conv {
            name: name.into(),
            c_in,
            c_out,
            k,
            stride,
            padding: k / 2,
        }
    }

    fn small_resnet() -> Architecture {
        Architecture {
            input: vec![1, 8, 8],
            elu_alpha: 1.0,
            steps: vec![
                conv("stem", 1, 4, 3, 1),
                Step::Elu,
                Step::Residual {
                    main: vec![
                        conv("b.conv1", 4, 8, 1, 2),
                        Step::Elu,
                        conv("b.conv2", 8, 8, 3, 1),
                    ],
                    shortcut: vec![
                        conv("b.sc", 4, 8, 1, 2),
                        Step::BatchNorm {
                            name: "b.sc_bn".into(),
                            channels: 8,
                            mode: BnMode::Learnable,
                        },
                    ],
                },
                Step::GlobalAvgPool,
                Step::Linear {
                    name: "head".into(),
                    inputs: 8,
                    outputs: 3,
                },
            ],
        }
    }

    /// Shapes follow the convolution formula `(x + 2p - k) / s + 1`: 8 -> 8 (3x3, pad 1),
    /// -> 4 (1x1, stride 2), then [8] after pooling and [3] out; layers come depth first.
    #[test]
    fn shapes_and_layer_order() {
        let a = small_resnet();
        assert_eq!(a.output_shape().unwrap(), [3]);
        let names: Vec<_> = a.layers().unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["stem", "b.conv1", "b.conv2", "b.sc", "head"]);
        assert_eq!(a.norms(), [("b.sc_bn", 8, BnMode::Learnable)]);
    }

    #[test]
    fn mismatches_name_the_layer() {
        let mut a = small_resnet();
        if let Step::Residual { shortcut, .. } = &mut a.steps[2] {
            shortcut.clear();
        }
        let e = format!("{:#}", a.output_shape().unwrap_err());
        assert!(
            e.contains("main path [8, 4, 4] != shortcut [4, 8, 8]"),
            "{e}"
        );
        let mut a = small_resnet();
        a.steps[4] = Step::Linear {
            name: "head".into(),
            inputs: 9,
            outputs: 3,
        };
        let e = format!("{:#}", a.output_shape().unwrap_err());
        assert!(e.contains("layer head"), "{e}");
        let mut a = small_resnet();
        a.steps.push(Step::Linear {
            name: "stem".into(),
            inputs: 3,
            outputs: 3,
        });
        let e = format!("{:#}", a.output_shape().unwrap_err());
        assert!(e.contains("two layers are named stem"), "{e}");
    }

    #[test]
    fn json_round_trip() {
        let a = small_resnet();
        let j = serde_json::to_string(&a).unwrap();
        assert!(j.contains(r#""op":"residual""#), "{j}");
        assert_eq!(serde_json::from_str::<Architecture>(&j).unwrap(), a);
    }
}
