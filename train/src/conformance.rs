//! Conformance checks for plugins, public so that a plugin crate runs them on its own plugins
//! (the framework's tests run them on every built-in one):
//!
//! ```ignore
//! #[test]
//! fn my_mask_conforms() {
//!     supermask_train::conformance::check_plugin(PluginKind::Mask, "my-mask").unwrap();
//! }
//! ```
//!
//! [`check_plugin`] builds the plugin from its registered example parameters
//! ([`PluginEntry::example`]) and runs every check of its kind:
//! - all kinds: the TOML round trip (build, serialize with `typetag`, parse through the
//!   registry, serialize again: the same text, `type` = the registered name);
//! - masks ([`check_mask`]): values within the declared [`MaskRange`]; `hard_into` equal to
//!   `hard`; the declared gradient ([`MaskGradient`]) against central finite differences of
//!   `s(M)` (`s(M) = M` for the straight-through estimator); the fused kernels equal to the
//!   reference kernels (forward, input and score gradients) on a linear and a conv layer;
//! - losses ([`check_loss`]): finite, and the gradient against central finite differences;
//! - thresholds ([`check_threshold`]): one valid `tau_n <= tau_p` per layer at init and after
//!   an update;
//! - initializers ([`check_init`]): finite samples of the requested length whose variance
//!   matches the declared one, the same for the same seed;
//! - models ([`check_model`]): a masked and a dense build at the paper's input shape, and a
//!   forward pass giving `[batch, classes]` finite logits.

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use std::sync::Arc;
use supermask_core::{
    fused::{KernelConfig, KernelPath},
    init::Fans,
    mask::{self, MaskGradient},
    registry::{self, Plugin, PluginEntry},
    ForwardCtx, Initializer, Layer, LayerFactory, Loss, MaskCtx, MaskFn, MaskingConfig, ModelSpec,
    PluginKind, Registry, Result, Taus, Threshold,
};

/// Runs every check of its kind on the registered plugin `kind`/`name`, built with its
/// example parameters; returns the names of the checks that ran. The plugin's crate must be
/// linked (a test in that crate is).
pub fn check_plugin(kind: PluginKind, name: &str) -> Result<Vec<&'static str>> {
    crate::link_plugins();
    let entry = Registry::get(kind, name)?;
    let plugin = entry
        .create_example()
        .with_context(|| format!("{kind} `{name}` with its example parameters"))?;
    let mut ran = vec!["toml round trip"];
    check_toml_round_trip(entry).with_context(|| format!("{kind} `{name}`"))?;
    let ran_kind = match plugin {
        Plugin::Mask(m) => check_mask(m).map(|()| "mask"),
        Plugin::Loss(l) => check_loss(l.as_ref()).map(|()| "loss"),
        Plugin::Threshold(t) => check_threshold(t.as_ref()).map(|()| "threshold"),
        Plugin::Init(i) => check_init(i.as_ref()).map(|()| "init"),
        Plugin::Model(m) => check_model(m.as_ref()).map(|()| "model"),
    }
    .with_context(|| format!("{kind} `{name}`"))?;
    ran.push(ran_kind);
    Ok(ran)
}

/// Every registered plugin whose name passes `filter`, checked with [`check_plugin`]; an
/// error lists every failure.
pub fn check_registered(filter: impl Fn(&PluginEntry) -> bool) -> Result<usize> {
    crate::link_plugins();
    let mut failures = Vec::new();
    let mut n = 0;
    for e in Registry::try_entries()?.iter().filter(|e| filter(e)) {
        n += 1;
        if let Err(err) = check_plugin(e.kind, e.name) {
            failures.push(format!("{err:#}"));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(n)
}

fn to_toml(p: &Plugin) -> Result<String> {
    Ok(match p {
        Plugin::Mask(x) => toml::to_string(x.as_ref()),
        Plugin::Threshold(x) => toml::to_string(x.as_ref()),
        Plugin::Init(x) => toml::to_string(x.as_ref()),
        Plugin::Model(x) => toml::to_string(x.as_ref()),
        Plugin::Loss(x) => toml::to_string(x.as_ref()),
    }?)
}

/// Build from the example parameters -> serialize (`typetag`) -> parse through the registry ->
/// serialize again gives the same TOML, whose `type` is the registered name.
pub fn check_toml_round_trip(entry: &PluginEntry) -> Result<()> {
    let text = to_toml(&entry.create_example()?)?;
    let table: toml::Table = toml::from_str(&text)?;
    anyhow::ensure!(
        table.get("type").and_then(|v| v.as_str()) == Some(entry.name),
        "serializes with type {:?}, not its registered name `{}` (the typetag name must equal \
         the registered one): {text}",
        table.get("type"),
        entry.name
    );
    let again = to_toml(&Registry::create_from_table(entry.kind, table)?)?;
    anyhow::ensure!(
        again == text,
        "does not round-trip through TOML:\n{text}\nbecame\n{again}"
    );
    Ok(())
}

/// A deterministic stream of values in [-1, 1) (xorshift; the values only need to vary).
fn values(n: usize, seed: u64) -> Vec<f32> {
    supermask_core::rng::spread_values(n, seed, -1.0, 1.0)
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// `|a - b| <= tol * max(max|b|, floor)` elementwise, or an error naming `what` and the index.
fn close(what: &str, a: &[f32], b: &[f32], tol: f32, floor: f32) -> Result<()> {
    anyhow::ensure!(
        a.len() == b.len(),
        "{what}: {} vs {} values",
        a.len(),
        b.len()
    );
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        anyhow::ensure!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (tolerance {tol} x {scale})"
        );
    }
    Ok(())
}

/// The checks of a mask function (see the module docs).
pub fn check_mask(m: Arc<dyn MaskFn>) -> Result<()> {
    let dev = Device::Cpu;
    let (r, c) = (7, 11);
    let allowed = m.range().values();
    for (k, tau) in [0.0f32, 0.05, 0.3, 0.9].into_iter().enumerate() {
        let taus = Taus {
            neg: -tau,
            pos: tau,
        };
        let s = values(r * c, 40 + k as u64);
        let scores = Tensor::from_vec(s.clone(), (r, c), &dev)?;
        for ctx in [
            MaskCtx::eval(),
            MaskCtx {
                train: true,
                seed: 5,
            },
        ] {
            let hard = flat(&m.hard(&scores, taus, &ctx)?)?;
            if let Some(v) = hard.iter().find(|v| !allowed.contains(v)) {
                anyhow::bail!("hard() gave {v}, outside its declared range {allowed:?}");
            }
            let mut out = vec![f32::NAN; r * c];
            if m.hard_into(&s, taus, &ctx, &mut out) {
                anyhow::ensure!(
                    out == hard,
                    "hard_into() differs from hard() at tau {tau} (train {})",
                    ctx.train
                );
            }
        }
    }
    check_mask_gradient(m.as_ref())?;
    check_mask_fused(m)
}

/// The gradient of `sum(apply(M) * c)` against central finite differences (f32, step 1e-2)
/// of `sum(s(M) * c)`, `s` the declared surrogate (`M` for the straight-through estimator).
fn check_mask_gradient(m: &dyn MaskFn) -> Result<()> {
    let dev = Device::Cpu;
    let n = 24;
    let taus = Taus {
        neg: -0.2,
        pos: 0.2,
    };
    let ctx = MaskCtx::eval();
    let s0 = values(n, 3);
    let coef = Tensor::from_vec(values(n, 4), n, &dev)?;
    let scores = Var::from_vec(s0.clone(), n, &dev)?;
    let y = mask::apply(m, scores.as_tensor(), taus, &ctx)?;
    let hard = m.hard(scores.as_tensor(), taus, &ctx)?;
    close(
        "apply() values vs hard()",
        &flat(&y)?,
        &flat(&hard)?,
        0.0,
        1.0,
    )?;
    let grads = (&y * &coef)?.sum_all()?.backward()?;
    let got = flat(
        grads
            .get(scores.as_tensor())
            .context("no gradient reaches the scores")?,
    )?;
    let surrogate = |v: &[f32]| -> Result<f32> {
        let t = Tensor::from_vec(v.to_vec(), n, &dev)?;
        let s = match m.gradient() {
            MaskGradient::StraightThrough => t,
            MaskGradient::StraightThroughAbs => t.abs()?,
            MaskGradient::Surrogate => m.surrogate(&t, taus)?,
        };
        Ok((s * &coef)?.sum_all()?.to_scalar::<f32>()?)
    };
    let h = 1e-2f32;
    let mut want = Vec::with_capacity(n);
    for i in 0..n {
        let (mut up, mut down) = (s0.clone(), s0.clone());
        up[i] += h;
        down[i] -= h;
        want.push((surrogate(&up)? - surrogate(&down)?) / (2.0 * h));
    }
    close(
        &format!(
            "declared gradient ({:?}) vs finite differences",
            m.gradient()
        ),
        &got,
        &want,
        2e-2,
        1e-3,
    )
}

fn fixed_masking(m: Arc<dyn MaskFn>) -> Result<MaskingConfig> {
    let table = |s: &str| -> Result<toml::Table> { Ok(toml::from_str(s)?) };
    Ok(MaskingConfig::Masked {
        mask: m,
        threshold: registry::threshold_from_table(table("type = \"fixed\"")?)?,
        weight_init: registry::init_from_table(table(
            "type = \"elus\"\ndist = \"signed-constant\"",
        )?)?,
        score_init: registry::init_from_table(table("type = \"xavier-uniform\"")?)?,
    })
}

/// Forward, input gradient and score gradient of `sum(layer(x) * r)` on one kernel path.
fn run_layer(layer: &Layer, x: &[usize], path: KernelPath, train: bool) -> Result<[Vec<f32>; 3]> {
    let ctx = ForwardCtx {
        train,
        step: 3,
        seed: 11,
        kernels: KernelConfig {
            path,
            ..KernelConfig::default()
        },
    };
    let xv = Var::from_vec(values(x.iter().product(), 21), x, &Device::Cpu)?;
    let y = layer.forward_t(xv.as_tensor(), &ctx)?;
    let r = Tensor::from_vec(values(y.elem_count(), 22), y.shape(), &Device::Cpu)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let (_, param) = layer.trainable();
    Ok([
        flat(&y)?,
        flat(grads.get(xv.as_tensor()).context("no input gradient")?)?,
        flat(grads.get(param.as_tensor()).context("no score gradient")?)?,
    ])
}

/// The fused kernels against the reference kernels on a masked linear and a masked conv
/// layer, with signed-constant and with varied weights (a mask that rescales its weights,
/// [`MaskFn::scaled_weight`], sees both), in training and evaluation: forward values, input
/// and score gradients to 1e-4 of their scale. (A mask with a surrogate gradient runs on the
/// reference path either way.)
fn check_mask_fused(m: Arc<dyn MaskFn>) -> Result<()> {
    let mut f = LayerFactory::new(fixed_masking(m)?, Device::Cpu, 7);
    let mut cases = Vec::new();
    for (signed_constant, fc, conv) in [(true, "fc", "conv"), (false, "fc_varied", "conv_varied")] {
        cases.push((f.linear(fc, 13, 9)?, vec![4, 13], signed_constant));
        cases.push((
            f.conv2d(conv, 3, 5, 3, 1, 1)?,
            vec![2, 3, 6, 6],
            signed_constant,
        ));
    }
    for (mut layer, x, signed_constant) in cases {
        if let Layer::Masked(l) = &mut layer {
            // Signed-constant (or varied) weights, varied scores, thresholds that leave all
            // three values.
            let shape = l.spec.shape.clone();
            let n: usize = shape.iter().product();
            let w: Vec<f32> = values(n, 31)
                .iter()
                .map(|v| {
                    if signed_constant {
                        0.5f32.copysign(*v)
                    } else {
                        *v
                    }
                })
                .collect();
            l.set_weight(Tensor::from_vec(w, shape.as_slice(), &Device::Cpu)?)?;
            l.scores().set(&Tensor::from_vec(
                values(n, 32),
                shape.as_slice(),
                &Device::Cpu,
            )?)?;
            l.set_taus(Taus {
                neg: -0.1,
                pos: 0.1,
            })?;
        }
        for train in [false, true] {
            let reference = run_layer(&layer, &x, KernelPath::Reference, train)?;
            let fused = run_layer(&layer, &x, KernelPath::Fused, train)?;
            for (what, a, b) in [
                ("forward", &fused[0], &reference[0]),
                ("input gradient", &fused[1], &reference[1]),
                ("score gradient", &fused[2], &reference[2]),
            ] {
                close(
                    &format!(
                        "layer {} (train {train}, signed-constant weights {signed_constant}): \
                         fused vs reference {what}",
                        layer.name()
                    ),
                    a,
                    b,
                    1e-4,
                    f32::MIN_POSITIVE,
                )?;
            }
        }
    }
    Ok(())
}

/// A finite loss and its gradient against central finite differences in the logits (f64).
pub fn check_loss(loss: &dyn Loss) -> Result<()> {
    let dev = Device::Cpu;
    let (b, k) = (5, 4);
    let z0: Vec<f64> = values(b * k, 9).iter().map(|&v| 2.0 * v as f64).collect();
    let labels = Tensor::from_vec(vec![0u32, 3, 1, 2, 3], b, &dev)?;
    let value = |z: &[f64]| -> Result<f64> {
        let t = Tensor::from_vec(z.to_vec(), (b, k), &dev)?;
        Ok(loss.loss(&t, &labels)?.to_scalar::<f64>()?)
    };
    let v = value(&z0)?;
    anyhow::ensure!(v.is_finite(), "the loss is {v}");
    let zv = Var::from_vec(z0.clone(), (b, k), &dev)?;
    let grads = loss.loss(zv.as_tensor(), &labels)?.backward()?;
    let got: Vec<f64> = grads
        .get(zv.as_tensor())
        .context("no gradient reaches the logits")?
        .flatten_all()?
        .to_vec1()?;
    let h = 1e-5;
    for i in 0..b * k {
        let (mut up, mut down) = (z0.clone(), z0.clone());
        up[i] += h;
        down[i] -= h;
        let want = (value(&up)? - value(&down)?) / (2.0 * h);
        anyhow::ensure!(
            (got[i] - want).abs() <= 1e-6 + 1e-4 * want.abs(),
            "dL/dz[{i}] = {} but finite differences give {want}",
            got[i]
        );
    }
    Ok(())
}

/// Valid thresholds (`tau_n <= tau_p`, finite) for each of three layers at init and after an
/// update.
pub fn check_threshold(th: &dyn Threshold) -> Result<()> {
    th.validate()?;
    let dev = Device::Cpu;
    let scores = [(6, 5), (4, 8), (3, 3)]
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            Ok(Tensor::from_vec(
                values(r * c, 60 + i as u64),
                (r, c),
                &dev,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let check = |what: &str, taus: &[Taus]| -> Result<()> {
        anyhow::ensure!(
            taus.len() == scores.len(),
            "{what}: {} thresholds for {} layers",
            taus.len(),
            scores.len()
        );
        for (i, t) in taus.iter().enumerate() {
            anyhow::ensure!(
                t.neg.is_finite() && t.pos.is_finite() && t.neg <= t.pos,
                "{what}: layer {i} got tau_n {} > tau_p {} or a non-finite value",
                t.neg,
                t.pos
            );
        }
        Ok(())
    };
    let init = th.init(&scores)?;
    check("init", &init)?;
    check("update", &th.update(&scores, &init)?)
}

/// Finite samples of the requested length with the declared variance (within 15% over 20,000
/// draws), identical for the same seed.
pub fn check_init(init: &dyn Initializer) -> Result<()> {
    init.validate()?;
    let fans = Fans {
        fan_in: 300,
        fan_out: 100,
    };
    let n = 20_000;
    let draw = |seed| init.sample(n, fans, 0.0, &mut rand::rngs::StdRng::seed_from_u64(seed));
    let a = draw(1);
    anyhow::ensure!(a.len() == n, "asked for {n} values, got {}", a.len());
    anyhow::ensure!(a.iter().all(|v| v.is_finite()), "non-finite samples");
    anyhow::ensure!(a == draw(1), "the same seed gave other samples");
    let want = init.variance(fans, 0.0);
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    anyhow::ensure!(
        (var - want).abs() <= 0.15 * want,
        "sample variance {var:.4e}, declared {want:.4e}"
    );
    Ok(())
}

/// A masked (signed mask, fixed thresholds) and a dense build at the paper's input shape, and
/// a forward pass of 2 samples giving finite `[2, classes]` logits on both kernel paths.
pub fn check_model(spec: &dyn ModelSpec) -> Result<()> {
    let input = spec.paper_input();
    let signed = registry::mask_from_table(toml::from_str("type = \"signed\"")?)?;
    let dense = MaskingConfig::Dense {
        weight_init: registry::init_from_table(toml::from_str("type = \"he\"")?)?,
    };
    for (what, masking) in [("masked", fixed_masking(signed)?), ("dense", dense)] {
        let model = supermask_core::build_model(spec, &input, &masking, &Device::Cpu, 0)
            .with_context(|| format!("{what} build for input {input:?}"))?;
        let mut dims = vec![2];
        dims.extend(&input);
        let x = Tensor::from_vec(
            values(dims.iter().product(), 5),
            dims.as_slice(),
            &Device::Cpu,
        )?;
        for path in [KernelPath::Fused, KernelPath::Reference] {
            let ctx = ForwardCtx {
                kernels: KernelConfig {
                    path,
                    ..KernelConfig::default()
                },
                ..ForwardCtx::eval()
            };
            let y = model.forward_t(&x, &ctx)?;
            anyhow::ensure!(
                y.dims() == [2, spec.classes()],
                "{what} {path:?}: logits of shape {:?}, expected [2, {}]",
                y.dims(),
                spec.classes()
            );
            anyhow::ensure!(
                flat(&y)?.iter().all(|v| v.is_finite()),
                "{what} {path:?}: non-finite logits"
            );
        }
    }
    Ok(())
}
