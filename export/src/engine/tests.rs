//! Tests of the engine: its parallel helper, and every FCN batch path against a dense f64
//! reference forward pass.

use super::*;
use crate::{LayerWeights, SsmLayer};

use supermask_core::rng::spread_values as values;

/// An FCN 50-40-30-10: a sparse signed-constant layer (8% kept), a real-valued layer (the
/// fused kernels' sparse form, not grouped) and a dense-ish signed-constant one (70%).
fn model() -> SsmModel {
    let ternary = |name: &str, shape: [usize; 2], density: f32, seed: u64| {
        let n = shape[0] * shape[1];
        let keep = values(n, seed, 0.0, 1.0);
        let sign = values(n, seed + 99, 0.0, 1.0);
        let pattern = keep
            .iter()
            .zip(&sign)
            .map(|(&k, &s)| match (k < density, s < 0.5) {
                (false, _) => 0,
                (true, true) => -1,
                (true, false) => 1,
            })
            .collect();
        SsmLayer {
            name: name.into(),
            shape: shape.to_vec(),
            weights: LayerWeights::Ternary {
                magnitude: 0.37,
                pattern,
            },
        }
    };
    let real: Vec<f32> = values(30 * 40, 5, -0.5, 0.5)
        .into_iter()
        .map(|v| if v.abs() < 0.4 { 0.0 } else { v })
        .collect();
    SsmModel {
        model: serde_json::json!({
            "spec": {"type": "fcn", "elu_alpha": 0.8},
            "arch": {"input": [50], "elu_alpha": 0.8, "steps": [
                {"op": "flatten"},
                {"op": "linear", "name": "fc1", "inputs": 50, "outputs": 40},
                {"op": "elu"},
                {"op": "linear", "name": "fc2", "inputs": 40, "outputs": 30},
                {"op": "elu"},
                {"op": "linear", "name": "fc3", "inputs": 30, "outputs": 10},
            ]},
        }),
        layers: vec![
            ternary("fc1", [40, 50], 0.08, 1),
            SsmLayer {
                name: "fc2".into(),
                shape: vec![30, 40],
                weights: LayerWeights::Values(real),
            },
            ternary("fc3", [10, 30], 0.7, 3),
        ],
        tensors: vec![],
    }
}

/// The forward pass in f64 with dense weights: the reference.
fn reference(m: &SsmModel, x: &[f32], alpha: f64) -> Vec<f64> {
    let mut h: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for (i, l) in m.layers.iter().enumerate() {
        let (rows, cols) = (l.shape[0], l.shape[1]);
        let w = l.dense();
        let mut y: Vec<f64> = (0..rows)
            .map(|r| (0..cols).map(|c| f64::from(w[r * cols + c]) * h[c]).sum())
            .collect();
        if i + 1 < m.layers.len() {
            for v in &mut y {
                if *v < 0.0 {
                    *v = alpha * v.exp_m1();
                }
            }
        }
        h = y;
    }
    h
}

/// [`in_parallel`] from outside rayon's pool (this test's thread: the caller takes a share)
/// and inside it: every chunk of `out` gets `f` of its own chunk of `x`, exactly once, for
/// chunk counts below, at and above the pool's size and a short last chunk.
#[test]
fn in_parallel_runs_every_chunk_once() {
    for chunks in 1..=9 {
        let (xs, os) = (3, 2);
        let x: Vec<f32> = (0..chunks * xs - 1).map(|v| v as f32).collect();
        let expected: Vec<f32> = x.chunks(xs).flat_map(|c| [c[0], c.len() as f32]).collect();
        let run = |out: &mut [f32]| {
            in_parallel(&x, out, (xs, os), |x, out| {
                // Adds, so that a chunk run twice shows.
                out[0] += x[0];
                out[1] += x.len() as f32;
            })
        };
        let mut out = vec![0.0f32; chunks * os];
        run(&mut out);
        assert_eq!(out, expected, "{chunks} chunks from outside the pool");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut out = vec![0.0f32; chunks * os];
        pool.install(|| run(&mut out));
        assert_eq!(out, expected, "{chunks} chunks inside a pool");
    }
}

/// A chunk that panics, on the caller or on a helper, surfaces as a panic of the call, not
/// as a caller spinning forever for a chunk that never finishes.
#[test]
fn in_parallel_passes_a_panic_on() {
    for bad in 0..6 {
        let x: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut out = vec![0.0f32; 6];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            in_parallel(&x, &mut out, (1, 1), |x, o| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                assert!(x[0] != bad as f32, "chunk {bad} fails");
                o[0] = 1.0;
            })
        }));
        assert!(result.is_err(), "chunk {bad}: the panic was lost");
    }
}

/// Every batch path of the linear engine (sample by sample, blocks of [`BLOCK`] and
/// [`WIDE_BLOCK`] samples, partial blocks padded with zero samples) against the dense f64
/// reference, to 1e-5 of each sample's largest logit.
#[test]
fn every_fcn_batch_path_matches_the_dense_reference() {
    let m = model();
    let e = Engine::new(&m).unwrap();
    let x = values(300 * 50, 11, -2.0, 2.0);
    let want: Vec<f64> = x
        .chunks_exact(50)
        .flat_map(|s| reference(&m, s, 0.8))
        .collect();
    // The first samples of `x` through the engine (`got`) against the reference.
    let check = |got: &[f32], what: &str| {
        for (s, (g, w)) in got.chunks_exact(10).zip(want.chunks_exact(10)).enumerate() {
            let scale = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (a, b) in g.iter().zip(w) {
                assert!(
                    (f64::from(*a) - b).abs() <= 1e-5 * scale,
                    "{what}: sample {s}: {g:?} vs {w:?}"
                );
            }
        }
    };
    // The engine picks the path from the batch size; these sizes cover each one.
    for n in [1, 2, 3, 5, 6, 31, 32, 33, 64, 300] {
        let got = e.forward(&x[..n * 50], n).unwrap();
        assert_eq!(got.len(), n * 10, "batch {n}");
        check(&got, &format!("batch {n}"));
    }
    // And the block sizes directly (the wide one is picked only for batches of at least
    // WIDE_BLOCK per thread, which depends on the machine's cores).
    for n in [1, 5, BLOCK, WIDE_BLOCK] {
        let mut out = vec![0.0f32; n * 10];
        let Net::Linear(layers) = &e.net else {
            unreachable!()
        };
        e.block::<BLOCK>(
            layers,
            50,
            &x[..n.min(BLOCK) * 50],
            &mut out[..n.min(BLOCK) * 10],
        );
        check(&out[..n.min(BLOCK) * 10], &format!("block {n}"));
        e.block::<WIDE_BLOCK>(layers, 50, &x[..n * 50], &mut out);
        check(&out, &format!("wide block {n}"));
        let nb = n.min(NARROW_BLOCK);
        e.block::<NARROW_BLOCK>(layers, 50, &x[..nb * 50], &mut out[..nb * 10]);
        check(&out[..nb * 10], &format!("narrow block {n}"));
    }
}

/// A Conv net whose first convolution keeps no entry in two of its four output channels:
/// conv 2->4, ELU, conv 4->6, 2x2 max-pool, ELU, flatten, linear 6*3*3->5 (6x6 inputs,
/// 30% kept elsewhere, so the 3x3 layers run the tap kernels where the CPU has AVX2).
fn conv_model_with_dead_channels() -> SsmModel {
    let ternary = |name: &str, shape: Vec<usize>, seed: u64, dead_rows: &[usize]| {
        let n: usize = shape.iter().product();
        let cols = n / shape[0];
        let keep = values(n, seed, 0.0, 1.0);
        let pattern = keep
            .iter()
            .enumerate()
            .map(|(i, &k)| match k {
                _ if dead_rows.contains(&(i / cols)) => 0,
                k if k < 0.15 => -1,
                k if k < 0.3 => 1,
                _ => 0,
            })
            .collect();
        SsmLayer {
            name: name.into(),
            shape,
            weights: LayerWeights::Ternary {
                magnitude: 0.6,
                pattern,
            },
        }
    };
    SsmModel {
        model: serde_json::json!({
            "arch": {"input": [2, 6, 6], "elu_alpha": 1.0, "steps": [
                {"op": "conv", "name": "conv1", "c_in": 2, "c_out": 4, "k": 3, "stride": 1,
                 "padding": 1},
                {"op": "elu"},
                {"op": "conv", "name": "conv2", "c_in": 4, "c_out": 6, "k": 3, "stride": 1,
                 "padding": 1},
                {"op": "elu"},
                {"op": "max-pool", "k": 2, "stride": 2, "padding": 0},
                {"op": "flatten"},
                {"op": "linear", "name": "fc", "inputs": 54, "outputs": 5},
            ]},
        }),
        layers: vec![
            ternary("conv1", vec![4, 2, 3, 3], 11, &[1, 3]),
            ternary("conv2", vec![6, 4, 3, 3], 12, &[]),
            ternary("fc", vec![5, 54], 13, &[]),
        ],
        tensors: vec![],
    }
}

/// The plan drops the second convolution's entries that read the first one's empty (so zero)
/// channels, and the engine's features are the bits of the same layers run one by one with
/// every entry (the fused kernels' per-sample convolution and pool, the engine's ELU).
#[test]
fn entries_reading_dead_channels_are_dropped_and_the_features_keep_their_bits() {
    use supermask_core::fused::{conv_sample, max_pool2_sample, EffLayout};
    let m = conv_model_with_dead_channels();
    let engine = Engine::new(&m).unwrap();
    let Net::Steps { front, .. } = &engine.net else {
        panic!("a conv net runs by steps")
    };
    let reads_dead = {
        let LayerWeights::Ternary { pattern, .. } = &m.layers[1].weights else {
            unreachable!()
        };
        let kept = |ci: usize| {
            (0..6)
                .flat_map(|co| (0..9).map(move |t| co * 36 + ci * 9 + t))
                .filter(|&i| pattern[i] != 0)
                .count()
        };
        kept(1) + kept(3)
    };
    assert!(reads_dead > 0, "the model should have entries to drop");
    let Some(Op::Conv(second)) = front.iter().filter(|op| matches!(op, Op::Conv(_))).nth(1) else {
        panic!("two convolutions")
    };
    let nnz = |e: &Effective| match e {
        Effective::Sparse(t) => t.idx.len(),
        Effective::Dense { data, .. } => data.iter().filter(|&&v| v != 0.0).count(),
    };
    assert_eq!(nnz(&second.eff), m.layers[1].kept() - reads_dead);

    // 3 samples run the linear layer sample by sample, 17 in blocks (in chunks per thread).
    let x = values(17 * 72, 21, -2.0, 2.0);
    let few = engine.forward(&x[..3 * 72], 3).unwrap();
    let many = engine.forward(&x, 17).unwrap();
    let eff = |l: &SsmLayer, layout| {
        let dense = l.dense();
        let mask: Vec<f32> = dense
            .iter()
            .map(|&v| f32::from(u8::from(v != 0.0)))
            .collect();
        Effective::build(
            &dense,
            &mask,
            l.shape[0],
            l.numel() / l.shape[0],
            Some(0.6),
            layout,
        )
    };
    let (w1, w2) = (
        eff(&m.layers[0], EffLayout::Sparse),
        eff(&m.layers[1], EffLayout::Sparse),
    );
    let fc = eff(&m.layers[2], EffLayout::Sparse);
    for (b, x) in x.chunks_exact(72).enumerate() {
        let (mut h, ..) = conv_sample(&w1, 2, 6, 6, 3, 1, 1, x).unwrap();
        elu_in_place(&mut h, 1.0);
        let (h, ..) = conv_sample(&w2, 4, 6, 6, 3, 1, 1, &h).unwrap();
        let mut h = max_pool2_sample(&h, 6, 6, 6);
        elu_in_place(&mut h, 1.0);
        // The features before the linear layer, bit for bit.
        let features = engine.run(front, x, &engine.input).unwrap().v;
        assert_eq!(
            features.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            h.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "sample {b}"
        );
        // The logits to rounding: the engine groups the linear layer's entries.
        let mut want = vec![0.0f32; 5];
        fc.matmul(&h, 1, &mut want);
        let logits = few.get(b * 5..(b + 1) * 5);
        for got in logits.into_iter().chain([&many[b * 5..(b + 1) * 5]]) {
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "sample {b}: {g} against {w}"
                );
            }
        }
    }
}
