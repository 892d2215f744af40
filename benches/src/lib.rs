//! Shared helpers of the supermask benchmarks: synthetic data and the PyTorch runner.

use std::process::Command;
use supermask_datasets::Dataset;
use supermask_export::{LayerWeights, SsmLayer, SsmModel};

/// Sets the thread count from `SUPERMASK_BENCH_THREADS` (default 2) unless
/// `RAYON_NUM_THREADS` is set, with the CLI's pool and allocator setup
/// ([`supermask_train::configure_threads_with`], [`supermask_train::configure_allocator`]),
/// and flushes denormals to zero (MXCSR's FTZ and DAZ bits) on the calling thread and on every
/// thread of rayon's global pool, where the fused kernels and candle's GEMM run, as PyTorch's
/// `torch.set_flush_denormal(True)` does on the reference side: a net whose values decay into
/// denormals would otherwise time the slow microcode path on either side (a no-op off
/// x86-64). Call before any tensor work. Returns the count.
pub fn set_threads() -> usize {
    let threads: usize = std::env::var("SUPERMASK_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let requested = std::env::var_os("RAYON_NUM_THREADS")
        .is_none()
        .then_some(threads);
    supermask_train::configure_allocator();
    supermask_train::configure_threads_with(requested, set_ftz_daz)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, deprecated)]
fn set_ftz_daz() {
    use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
    const FTZ: u32 = 1 << 15;
    const DAZ: u32 = 1 << 6;
    // SAFETY: reading and writing MXCSR changes only this thread's float rounding/flush mode;
    // FTZ and DAZ are supported by every x86-64 CPU with SSE2 (all of them).
    unsafe { _mm_setcsr(_mm_getcsr() | FTZ | DAZ) }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_ftz_daz() {}

/// Largest loss of a healthy training run in the conv benchmarks (chance level for 10 classes
/// is 2.3; the clipped loss cannot exceed 16.1): see [`unhealthy`].
pub const LOSS_BOUND: f64 = 10.0;

/// A conv benchmark's workload: a preset (its TOML text) and the arguments that make the
/// PyTorch script run the same recipe.
pub struct Workload {
    /// Row label.
    pub name: &'static str,
    /// The preset's TOML text (`include_str!` of a file under `configs/`).
    pub preset: &'static str,
    /// The PyTorch script's arguments for the same net and recipe.
    pub torch: &'static [&'static str],
}

/// Why a benchmark run's losses do not show a healthy training run, if they do not: a
/// non-finite loss, one above `bound` (chance level for 10 classes is 2.3; the clipped loss
/// cannot exceed 16.1), or a last loss more than twice the first. A ratio is only reported
/// for healthy runs on both sides.
pub fn unhealthy(losses: &[f64], bound: f64) -> Option<String> {
    let (Some(&first), Some(&last)) = (losses.first(), losses.last()) else {
        return Some("no loss reported".into());
    };
    if let Some(v) = losses.iter().find(|v| !v.is_finite()) {
        return Some(format!("loss {v}"));
    }
    if let Some(v) = losses.iter().find(|&&v| v > bound) {
        return Some(format!("loss {v:.3} > {bound}"));
    }
    (last > 2.0 * first).then(|| format!("loss grew {first:.3} -> {last:.3}"))
}

/// [`synthetic`] images `[c, h, w]` with a learnable class signal, the training benchmarks'
/// batch (the PyTorch scripts build the same kind): a sample of class `k` gets +2 on the rows
/// `[k h / classes, (k + 1) h / classes)` of channel `k % c`, so a healthy training run's
/// loss falls over a few steps on it (on random labels a sound recipe can look unhealthy).
pub fn synthetic_learnable(n: usize, shape: &[usize], classes: usize, seed: u64) -> Dataset {
    let mut d = synthetic(n, shape, classes, seed);
    let [c, h, w] = shape[..] else {
        panic!("synthetic_learnable needs [c, h, w], got {shape:?}")
    };
    for (img, &label) in d.images.chunks_exact_mut(c * h * w).zip(&d.labels) {
        let k = usize::from(label);
        let rows = k * h / classes..(k + 1) * h / classes;
        let plane = &mut img[(k % c) * h * w..(k % c + 1) * h * w];
        for r in rows {
            plane[r * w..(r + 1) * w].iter_mut().for_each(|v| *v += 2.0);
        }
    }
    d
}

/// `n` synthetic MNIST-shaped samples (see [`synthetic`]).
pub fn synthetic_mnist(n: usize, seed: u64) -> Dataset {
    synthetic(n, &[1, 28, 28], 10, seed)
}

/// `n` synthetic samples of `shape`, roughly N(0,1) values from a seeded generator (the values
/// do not matter for timing), labels uniform in `0..classes`.
pub fn synthetic(n: usize, shape: &[usize], classes: usize, seed: u64) -> Dataset {
    let dim: usize = shape.iter().product();
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut images = Vec::with_capacity(n * dim);
    for _ in 0..n * dim {
        // Sum of 4 uniforms, centred and scaled: close enough to N(0,1) for timing.
        let u: f32 = (0..4)
            .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        images.push((u - 2.0) * 1.732);
    }
    let labels = (0..n).map(|_| (next() % classes as u64) as u8).collect();
    Dataset {
        images,
        labels,
        n,
        dim,
        shape: shape.to_vec(),
        classes,
    }
}

/// The middle value of `v` (the upper one of an even count).
///
/// # Panics
/// If `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `reps` calls of `f`, after `warmup` calls.
pub fn median_time(reps: usize, warmup: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    median(
        (0..reps.max(1))
            .map(|_| {
                let t0 = std::time::Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// `n` deterministic pseudo-random values in `[0, 1)` (xorshift64; only their spread matters).
pub fn unit_values(n: usize, seed: u64) -> Vec<f32> {
    supermask_core::rng::spread_values(n, seed, 0.0, 1.0)
}

/// Runs `python3 <script> <args>` if `torch` imports; returns its last line parsed as JSON.
pub fn run_torch(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let text = torch_stdout(script, args)?;
    serde_json::from_str(text.lines().last()?).ok()
}

/// Runs `python3 <script> <args>` if `torch` imports; returns every non-empty line of its
/// standard output parsed as JSON (the training scripts print one line an epoch). `None`,
/// with the reason on standard error, when torch does not import, the script fails, or a line
/// is not JSON.
pub fn run_torch_lines(script: &str, args: &[&str]) -> Option<Vec<serde_json::Value>> {
    let text = torch_stdout(script, args)?;
    let parsed: Result<Vec<_>, _> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect();
    parsed
        .map_err(|e| eprintln!("{script} printed a line that is not JSON ({e})"))
        .ok()
}

/// The standard output of `python3 <script> <args>`, if `torch` imports and the script succeeds.
fn torch_stdout(script: &str, args: &[&str]) -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!("torch not importable: skipping the PyTorch reference");
        return None;
    }
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ternary layer with `density` of its entries kept at random positions with random signs,
/// magnitude `sqrt(3 * 2 / fan_in)` (ELUS as the presets draw it).
pub fn ternary_layer(name: String, shape: Vec<usize>, density: f32, seed: u64) -> SsmLayer {
    let n: usize = shape.iter().product();
    let fan_in = n / shape[0];
    let keep = unit_values(n, seed);
    let sign = unit_values(n, seed + 1000);
    let pattern = keep
        .iter()
        .zip(&sign)
        .map(|(&u, &s)| {
            if u >= density {
                0
            } else if s < 0.5 {
                -1
            } else {
                1
            }
        })
        .collect();
    SsmLayer {
        name,
        shape,
        weights: LayerWeights::Ternary {
            magnitude: (3.0f32 * 2.0 / fan_in as f32).sqrt(),
            pattern,
        },
    }
}

/// The Table 1 FCN 784-300-100-10 with the mask densities of the trained ELUS net (seed 0 of
/// docs/results/table1-fcn.md: fc1 2.48%, fc2 8.91%, fc3 73.7% kept), random kept positions
/// and signs, signed-constant magnitudes.
pub fn generated_fcn() -> SsmModel {
    let dims = [
        (784usize, 300usize, 0.0248f32),
        (300, 100, 0.0891),
        (100, 10, 0.737),
    ];
    let layers = dims
        .iter()
        .enumerate()
        .map(|(i, &(inp, out, density))| {
            ternary_layer(
                format!("fc{}", i + 1),
                vec![out, inp],
                density,
                i as u64 + 1,
            )
        })
        .collect();
    SsmModel {
        model: serde_json::json!({"spec": {"type": "fcn", "elu_alpha": 1.0}, "dataset": "mnist"}),
        layers,
        tensors: vec![],
    }
}

/// A Conv2 (64, 64, pool, FC 256-256-10) with `density` of every layer kept.
pub fn generated_conv2(density: f32) -> SsmModel {
    // The Conv2 architecture's layer names (models/src/conv.rs): the engine checks them.
    let shapes: [(&str, Vec<usize>); 5] = [
        ("conv1", vec![64, 3, 3, 3]),
        ("conv2", vec![64, 64, 3, 3]),
        ("fc1", vec![256, 16384]),
        ("fc2", vec![256, 256]),
        ("fc3", vec![10, 256]),
    ];
    let layers = shapes
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            ternary_layer(name.to_string(), shape.clone(), density, i as u64 + 21)
        })
        .collect();
    SsmModel {
        model: serde_json::json!({"spec": {"type": "conv2", "elu_alpha": 1.0}, "dataset": "cifar10"}),
        layers,
        tensors: vec![],
    }
}

/// `(kept, all)` weight entries of a model's layers.
pub fn kept_and_numel(m: &SsmModel) -> (usize, usize) {
    m.layers
        .iter()
        .fold((0, 0), |(k, n), l| (k + l.kept(), n + l.numel()))
}

/// The Table 4 ResNet20 x1 preset at the paper's 21.13% remaining weights (initial rate
/// 0.7887, Table 4), built untrained on `dev`: the training model and its export.
pub fn paper_resnet20(dev: &candle_core::Device) -> (supermask_train::Trainer, SsmModel) {
    supermask_train::link_plugins();
    let preset = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/paper/table4-resnet20-x1-signed-elus.toml"
    );
    let text = std::fs::read_to_string(preset).expect("ResNet20 preset");
    let cfg = supermask_train::config::RunConfig::from_toml(
        &text,
        &["masking.threshold={ type = \"initial-rate\", rate = 0.7887 }".to_string()],
        "resnet20",
    )
    .expect("ResNet20 config");
    let trainer = supermask_train::Trainer::for_config(&cfg, dev).expect("ResNet20 model");
    let m = supermask_cli::export::export_trainer(&cfg, &trainer).expect("ResNet20 export");
    (trainer, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated models the `infer` bench times must load into the engine (a renamed
    /// layer once made that bench panic while everything else stayed green).
    #[test]
    fn generated_models_load_into_the_engine() {
        supermask_train::link_plugins();
        supermask_export::Engine::new(&generated_fcn()).expect("fcn");
        for density in [0.02, 0.1] {
            supermask_export::Engine::new(&generated_conv2(density)).expect("conv2");
        }
    }

    /// The `infer` bench's ResNet20 keeps the paper's 21.13% (Table 4: 53,530 of 248,624
    /// weights) within a tenth of a point, and loads into the engine.
    #[test]
    fn paper_resnet20_keeps_the_papers_share_and_loads() {
        let (_, m) = paper_resnet20(&candle_core::Device::Cpu);
        let (kept, numel) = kept_and_numel(&m);
        assert_eq!(numel, 248_624);
        let share = 100.0 * kept as f64 / numel as f64;
        assert!((share - 21.13).abs() < 0.1, "kept {share:.2}%");
        supermask_export::Engine::new(&m).expect("resnet20");
    }
}
