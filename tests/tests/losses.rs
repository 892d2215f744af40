//! The loss plugins: values against direct formulas and gradients against central finite
//! differences (in f64), including the clipped loss's zero gradient where it clips.

use candle_core::{DType, Device, Tensor, Var};
use supermask_core::{registry, Loss};
use supermask_plugins::losses::{ClippedCrossEntropy, CrossEntropy};

/// Logits of 4 samples x 5 classes: ordinary rows, a row whose label is certain (p = 1 -
/// ~1e-13, clipped at 1 - eps) and a row whose label is hopeless (p ~ 1e-13, clipped at eps).
fn logits() -> (Vec<f64>, Vec<u32>) {
    let x = vec![
        0.3, -1.2, 0.8, 2.0, -0.5, //
        1.1, 0.2, -0.7, 0.4, 0.9, //
        30.0, 0.0, 0.5, -1.0, 0.2, // label 0: saturated right answer
        0.0, 30.0, 0.1, 0.3, -0.4, // label 2: saturated wrong answer
    ];
    (x, vec![3, 4, 0, 2])
}

fn value(loss: &dyn Loss, x: &[f64], y: &[u32]) -> f64 {
    let t = Tensor::from_slice(x, (4, 5), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(y, 4, &Device::Cpu).unwrap();
    loss.loss(&t, &y).unwrap().to_scalar::<f64>().unwrap()
}

fn gradient(loss: &dyn Loss, x: &[f64], y: &[u32]) -> Vec<f64> {
    let v = Var::from_slice(x, (4, 5), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(y, 4, &Device::Cpu).unwrap();
    let l = loss.loss(v.as_tensor(), &y).unwrap();
    let g = l.backward().unwrap();
    g.get(v.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Central differences with step 1e-6 (f64): error ~1e-10 for these smooth functions.
fn numeric(loss: &dyn Loss, x: &[f64], y: &[u32]) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            (value(loss, &a, y) - value(loss, &b, y)) / (2.0 * h)
        })
        .collect()
}

/// The loss of an f32 batch, as f64.
fn batch_loss(loss: &dyn Loss, x: &Tensor, y: &Tensor) -> f64 {
    let l = loss.loss(x, y).unwrap();
    l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn log_softmax_row(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

#[test]
fn cross_entropy_value_and_gradient() {
    let (x, y) = logits();
    let loss = CrossEntropy::default();
    // Mean of -log softmax(x)[label].
    let want: f64 = x
        .chunks(5)
        .zip(&y)
        .map(|(r, &l)| -log_softmax_row(r)[l as usize])
        .sum::<f64>()
        / 4.0;
    assert!((value(&loss, &x, &y) - want).abs() < 1e-12);
    for (a, n) in gradient(&loss, &x, &y).iter().zip(numeric(&loss, &x, &y)) {
        assert!((a - n).abs() < 1e-7, "analytic {a} vs numeric {n}");
    }
}

#[test]
fn clipped_cross_entropy_value_and_gradient() {
    let (x, y) = logits();
    let eps = 1e-7;
    let loss = ClippedCrossEntropy { eps };
    // Keras: -log(clip(p_label, eps, 1 - eps)), mean over samples.
    let want: f64 = x
        .chunks(5)
        .zip(&y)
        .map(|(r, &l)| {
            let p = log_softmax_row(r)[l as usize].exp();
            -p.clamp(eps, 1.0 - eps).ln()
        })
        .sum::<f64>()
        / 4.0;
    let got = value(&loss, &x, &y);
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    // The hopeless row contributes exactly -ln(eps) / 4 and the certain one -ln(1-eps) / 4.
    let analytic = gradient(&loss, &x, &y);
    for (i, (a, n)) in analytic.iter().zip(numeric(&loss, &x, &y)).enumerate() {
        assert!(
            (a - n).abs() < 1e-7,
            "entry {i}: analytic {a} vs numeric {n}"
        );
    }
    // Zero gradient on both clipped rows, exactly; the others equal cross-entropy's.
    assert!(analytic[10..20].iter().all(|&g| g == 0.0), "{analytic:?}");
    let ce = gradient(&CrossEntropy::default(), &x, &y);
    for (a, c) in analytic[..10].iter().zip(&ce[..10]) {
        assert!((a - c).abs() < 1e-15);
    }
}

/// Each sample's clipped loss is at most -ln(eps) (16.1 for eps = 1e-7), however wrong, and
/// at least -ln(1 - eps), however right.
#[test]
fn clipped_loss_is_bounded() {
    let x = Tensor::from_slice(&[0.0f32, 1e4, -1e4, 0.0], (2, 2), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(&[0u32, 1], 2, &Device::Cpu).unwrap();
    let l = batch_loss(&ClippedCrossEntropy::default(), &x, &y);
    // Sample 0 is hopelessly wrong, sample 1 certainly right.
    let want = (-(1e-7f64).ln() - (-1e-7f64).ln_1p()) / 2.0;
    assert!((l - want).abs() < 1e-5, "{l} vs {want}");
    let unclipped = CrossEntropy::default()
        .loss(&x, &y)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // Cross-entropy on the logits: 1e4 for the wrong sample, 0 for the right one.
    assert!((unclipped - 5e3).abs() < 1.0, "{unclipped}");
}

/// The bound the divergence guard reads: the loss of a hopelessly wrong batch, -ln(eps) for
/// the clipped loss at any eps; none for cross-entropy on the logits.
#[test]
fn clipped_loss_declares_its_bound() {
    let x = Tensor::from_slice(&[0.0f32, 1e4, 1e4, 0.0], (2, 2), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(&[0u32, 1], 2, &Device::Cpu).unwrap();
    for eps in [1e-7, 1e-3] {
        let loss = ClippedCrossEntropy { eps };
        let worst = batch_loss(&loss, &x, &y);
        let bound = loss.max_value().unwrap();
        assert!((bound + eps.ln()).abs() < 1e-12, "{bound}");
        assert!((worst - bound).abs() < 1e-4 * bound, "{worst} vs {bound}");
    }
    assert_eq!(CrossEntropy::default().max_value(), None);
}

#[test]
fn losses_are_named_in_configs() {
    supermask_plugins::link();
    let l = registry::loss_from_table(
        toml::from_str("type = \"clipped-cross-entropy\"\neps = 1e-5").unwrap(),
    )
    .unwrap();
    let back: toml::Table = toml::from_str(&toml::to_string(l.as_ref()).unwrap()).unwrap();
    assert_eq!(back["type"].as_str(), Some("clipped-cross-entropy"));
    assert_eq!(back["eps"].as_float(), Some(1e-5));
    let bad = registry::loss_from_table(
        toml::from_str("type = \"clipped-cross-entropy\"\neps = 0.7").unwrap(),
    )
    .and_then(|l| l.validate());
    assert!(bad.unwrap_err().to_string().contains("eps"));
}
