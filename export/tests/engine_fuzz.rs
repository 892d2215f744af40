//! Structure-aware fuzzing of what the engine accepts: model files whose checksum is valid
//! (they are encoded, not corrupted) but whose layers, tensors or stored architecture
//! disagree (a layer of another rank or size, a missing or extra layer, a batch-norm tensor
//! of the wrong length, an architecture whose sizes do not chain). Building the engine either
//! fails with an error or gives an engine whose forward pass runs; it never panics.

use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use supermask_export::{
    format::{decode, encode},
    Engine, LayerWeights, SsmLayer, SsmModel,
};

/// SplitMix64: a deterministic stream for the mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn ternary(name: &str, shape: Vec<usize>, rng: &mut Rng) -> SsmLayer {
    let n: usize = shape.iter().product();
    SsmLayer {
        name: name.into(),
        shape,
        weights: LayerWeights::Ternary {
            magnitude: 0.1,
            pattern: (0..n).map(|_| rng.below(3) as i8 - 1).collect(),
        },
    }
}

/// A small conv net with a residual block and batch norms: conv1 (1 -> 2, 3x3), bn1, ELU,
/// residual(conv2 2 -> 2, bn2), global average pool, fc (2 -> 3).
fn conv_model(rng: &mut Rng) -> SsmModel {
    let bn = |name: &str, c: usize| {
        ["gamma", "beta", "running_mean", "running_var"].map(|t| {
            (
                format!("{name}.{t}"),
                vec![c],
                vec![if t == "running_var" { 1.0 } else { 0.5 }; c],
            )
        })
    };
    let mut tensors = Vec::new();
    tensors.extend(bn("bn1", 2));
    tensors.extend(bn("bn2", 2));
    SsmModel {
        model: json!({
            "spec": {"type": "test"},
            "arch": {"input": [1, 6, 6], "elu_alpha": 1.0, "steps": [
                {"op": "conv", "name": "conv1", "c_in": 1, "c_out": 2, "k": 3, "stride": 1, "padding": 1},
                {"op": "batch-norm", "name": "bn1", "channels": 2, "mode": "learnable"},
                {"op": "elu"},
                {"op": "residual", "main": [
                    {"op": "conv", "name": "conv2", "c_in": 2, "c_out": 2, "k": 3, "stride": 1, "padding": 1},
                    {"op": "batch-norm", "name": "bn2", "channels": 2, "mode": "learnable"},
                ], "shortcut": []},
                {"op": "global-avg-pool"},
                {"op": "linear", "name": "fc", "inputs": 2, "outputs": 3},
            ]},
        }),
        layers: vec![
            ternary("conv1", vec![2, 1, 3, 3], rng),
            ternary("conv2", vec![2, 2, 3, 3], rng),
            ternary("fc", vec![3, 2], rng),
        ],
        tensors,
    }
}

fn fcn_model(rng: &mut Rng) -> SsmModel {
    SsmModel {
        model: json!({
            "spec": {"type": "test"},
            "arch": {"input": [12], "elu_alpha": 1.0, "steps": [
                {"op": "flatten"},
                {"op": "linear", "name": "fc1", "inputs": 12, "outputs": 5},
                {"op": "elu"},
                {"op": "linear", "name": "fc2", "inputs": 5, "outputs": 3},
            ]},
        }),
        layers: vec![
            ternary("fc1", vec![5, 12], rng),
            ternary("fc2", vec![3, 5], rng),
        ],
        tensors: vec![],
    }
}

/// The number of numbers in the JSON tree.
fn count_numbers(v: &Value) -> usize {
    match v {
        Value::Number(_) => 1,
        Value::Array(a) => a.iter().map(count_numbers).sum(),
        Value::Object(o) => o.values().map(count_numbers).sum(),
        _ => 0,
    }
}

/// Sets the `n`-th number of the tree (depth-first) to `value`; returns the numbers left to
/// skip when the tree holds fewer.
fn set_number(v: &mut Value, n: usize, value: u64) -> Option<usize> {
    match v {
        Value::Number(_) if n == 0 => {
            *v = json!(value);
            None
        }
        Value::Number(_) => Some(n - 1),
        Value::Array(a) => a.iter_mut().try_fold(n, |n, x| set_number(x, n, value)),
        Value::Object(o) => o.values_mut().try_fold(n, |n, x| set_number(x, n, value)),
        _ => Some(n),
    }
}

/// One structural mutation of `m`, keeping every layer self-consistent (its values match its
/// shape) so that the file encodes and its checksum is valid.
fn mutate(m: &mut SsmModel, rng: &mut Rng) {
    match rng.below(6) {
        0 if !m.layers.is_empty() => {
            // A layer of another rank or size.
            let i = rng.below(m.layers.len() as u64) as usize;
            let rank = 1 + rng.below(4) as usize;
            let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(4) as usize).collect();
            let name = m.layers[i].name.clone();
            m.layers[i] = ternary(&name, shape, rng);
        }
        1 if !m.layers.is_empty() => {
            let i = rng.below(m.layers.len() as u64) as usize;
            m.layers.remove(i);
        }
        2 if !m.layers.is_empty() => {
            let i = rng.below(m.layers.len() as u64) as usize;
            let l = m.layers[i].clone();
            m.layers.insert(i, l);
        }
        3 if !m.tensors.is_empty() => {
            // A batch-norm tensor of another length.
            let i = rng.below(m.tensors.len() as u64) as usize;
            let n = rng.below(5) as usize;
            m.tensors[i].1 = vec![n];
            m.tensors[i].2 = vec![1.0; n];
        }
        _ => {
            // A number of the stored architecture (a size, a kernel, a stride, the input).
            let i = rng.below(count_numbers(&m.model) as u64) as usize;
            let value = [0, 1, 2, 3, 7, 1 << 40][rng.below(6) as usize];
            set_number(&mut m.model, i, value);
        }
    }
}

#[test]
fn mismatched_but_checksummed_models_never_panic_the_engine() {
    let mut rng = Rng(17);
    let (mut built, mut refused) = (0, 0);
    for case in 0..2000 {
        let mut m = if case % 2 == 0 {
            conv_model(&mut rng)
        } else {
            fcn_model(&mut rng)
        };
        for _ in 0..1 + rng.below(3) {
            mutate(&mut m, &mut rng);
        }
        let Ok(bytes) = encode(&m) else {
            continue;
        };
        let decoded = decode(&bytes).expect("a file the encoder wrote decodes");
        let result = catch_unwind(AssertUnwindSafe(|| {
            let engine = Engine::new(&decoded)?;
            let x = vec![0.25f32; engine.input_len() * 2];
            engine.forward(&x, 2).map(|y| y.len())
        }));
        match result {
            Ok(Ok(_)) => built += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!(
                "case {case}: the engine panicked on a checksummed file: layers {:?}, tensors \
                 {:?}, arch {}",
                decoded
                    .layers
                    .iter()
                    .map(|l| (&l.name, &l.shape))
                    .collect::<Vec<_>>(),
                decoded
                    .tensors
                    .iter()
                    .map(|t| (&t.0, &t.1))
                    .collect::<Vec<_>>(),
                decoded.model
            ),
        }
    }
    // Both outcomes occur: the mutations reach the checks, and some leave a valid model.
    assert!(refused > 500, "refused {refused}");
    assert!(built > 10, "built {built}");
}
