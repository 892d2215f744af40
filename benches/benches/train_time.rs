//! Time to train: a whole Fashion-MNIST training run of the signed Conv4 and ResNet20 presets,
//! ours and PyTorch's same recipe (`benches/python/torch_train.py`), one after the other in the
//! same process tree with the same threads, and the ratio ours / PyTorch of the summed epoch
//! times (training plus the test evaluation after each epoch, as each side measures them).
//!
//! Unlike `conv_step`, which times one step at the preset's initial density, these runs reach
//! the sparse masks the recipes train into (Conv4 keeps about 0.5% of its weights after epoch
//! 5), so this bench is where the sparse ternary conv path shows.
//!
//! `cargo bench -p supermask-benches --bench train_time` runs the workload: 15 epochs on
//! the full training set, seed 0 (hours on two cores). Knobs, all environment variables:
//! `SUPERMASK_BENCH_THREADS` (default 2), `SUPERMASK_TRAIN_TIME_EPOCHS` (default 15),
//! `SUPERMASK_TRAIN_TIME_SUBSET` (a seeded training subset, default the full 60,000),
//! `SUPERMASK_TRAIN_TIME_MODELS` (default `conv4,resnet20`), `SUPERMASK_TRAIN_TIME_TORCH_EPOCHS`
//! (default: all of them; see below) and `SUPERMASK_DATA` (the data root holding
//! `fashion-mnist/`, default `data` under the workspace; `supermask data fetch fashion-mnist`
//! fetches it).
//!
//! PyTorch's step computes with the dense masked weight, so its epochs cost the same at any
//! mask density; ours get cheaper as the masks thin out. Where a session cannot hold both whole
//! runs, `SUPERMASK_TRAIN_TIME_TORCH_EPOCHS=K` (at least 2) times PyTorch's first K epochs of
//! the same run and takes its time to train as their mean times the epochs. The verdict says so,
//! and refuses the ratio when PyTorch's K epoch times differ by more than 10%, the evidence that
//! they are constant.
//!
//! Both sides flush denormals to zero. Each side's per-epoch training loss is printed, and no
//! ratio is reported unless both runs are healthy ([`supermask_benches::unhealthy`]: finite,
//! below 10, the last at most twice the first).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;
use supermask_benches::{run_torch_lines, set_threads, unhealthy, Workload, LOSS_BOUND};
use supermask_train::config::RunConfig;
use supermask_train::run::{self, Start, TrainRequest};

/// The `torch_train.py` arguments are the commands in docs/results/conv-real-data.md that
/// reproduced our 15-epoch runs.
const WORKLOADS: &[Workload] = &[
    Workload {
        name: "conv4",
        preset: include_str!("../../configs/paper/table2-conv4-signed-elus.toml"),
        torch: &[
            "--model",
            "conv4",
            "--lr",
            "0.05",
            "--wd",
            "5e-4",
            "--schedule",
            "staircase",
            "--stair-steps",
            "3900",
            "--threshold",
            "max-fraction",
            "--fraction",
            "0.4",
            "--gain",
            "1.224744871391589",
            "--loss",
            "clipped",
        ],
    },
    Workload {
        name: "resnet20",
        preset: include_str!("../../configs/paper/table4-resnet20-x1-signed-elus.toml"),
        torch: &[
            "--model",
            "resnet20",
            "--lr",
            "0.1",
            "--wd",
            "1e-4",
            "--schedule",
            "plateau",
            "--plateau-factor",
            "0.2",
            "--plateau-patience",
            "15",
            "--threshold",
            "max-fraction",
            "--fraction",
            "0.75",
            "--gain",
            "1.224744871391589",
            "--loss",
            "clipped",
            "--augment",
            "--bn",
            "none",
            "--stem-bn",
            "learnable",
        ],
    },
];

/// One epoch as either side reports it.
struct Epoch {
    train_loss: f64,
    test_acc: f64,
    remaining: f64,
    /// Training plus the test evaluation after it.
    seconds: f64,
}

/// One side's run: its epochs and the wall-clock seconds of the whole run.
struct Side {
    epochs: Vec<Epoch>,
    wall: f64,
}

impl Side {
    fn seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }

    fn losses(&self) -> Vec<f64> {
        self.epochs.iter().map(|e| e.train_loss).collect()
    }

    fn last(&self) -> String {
        match self.epochs.last() {
            Some(e) => format!("{:.2}% at {:.2}%", 100.0 * e.test_acc, 100.0 * e.remaining),
            None => "n/a".into(),
        }
    }
}

/// PyTorch's time to train `epochs` epochs from its run of `ran` of them: the run's own sum
/// when it ran them all, otherwise the mean epoch times `epochs`, refused when its epochs are
/// not all there or their times differ by more than 10% (so are not shown constant).
fn torch_time(p: &Side, ran: usize, epochs: usize) -> Result<(f64, String), String> {
    if p.epochs.len() != ran {
        return Err(format!("pytorch ran {} of {ran} epochs", p.epochs.len()));
    }
    if ran == epochs {
        return Ok((p.seconds(), "timed whole".into()));
    }
    let secs = p.epochs.iter().map(|e| e.seconds);
    if secs.clone().any(|s| !s.is_finite()) {
        return Err("pytorch reported a non-finite epoch time".into());
    }
    let (lo, hi) = secs.fold((f64::INFINITY, 0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if hi > 1.1 * lo {
        return Err(format!(
            "pytorch's {ran} epochs took {lo:.1}-{hi:.1} s, not constant enough to extrapolate"
        ));
    }
    let mean = p.seconds() / ran as f64;
    Ok((
        mean * epochs as f64,
        format!("timed {ran} of {epochs} epochs, mean {mean:.1} s an epoch, times {epochs}"),
    ))
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

fn ours(w: &Workload, sets: &[String], data: &Path) -> anyhow::Result<Side> {
    let config = RunConfig::from_toml(w.preset, sets, w.name)?;
    let out = std::env::temp_dir().join(format!(
        "supermask-train-time-{}-{}",
        std::process::id(),
        w.name
    ));
    let t0 = Instant::now();
    let history = run::train(TrainRequest {
        config,
        out: out.clone(),
        data_dir: data.to_path_buf(),
        start: Start::Fresh,
        stop_after: None,
        progress: false,
        device: Device::Cpu,
        callbacks: Vec::new(),
    });
    let wall = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out);
    let epochs = history?
        .iter()
        .map(|m| Epoch {
            train_loss: m.train_loss,
            test_acc: m.test_acc,
            remaining: m.remaining,
            seconds: m.seconds + m.eval_seconds,
        })
        .collect();
    Ok(Side { epochs, wall })
}

fn torch(w: &Workload, common: &[String]) -> Option<Side> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_train.py");
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend(w.torch);
    let t0 = Instant::now();
    let lines = run_torch_lines(script, &args)?;
    let wall = t0.elapsed().as_secs_f64();
    let epochs = lines
        .iter()
        .map(|v| {
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            Epoch {
                train_loss: f("train_loss"),
                test_acc: f("test_acc"),
                remaining: f("remaining"),
                seconds: f("seconds"),
            }
        })
        .collect();
    Some(Side { epochs, wall })
}

fn main() -> anyhow::Result<()> {
    let threads = set_threads();
    supermask_train::link_plugins();
    let epochs: usize = env_or("SUPERMASK_TRAIN_TIME_EPOCHS", "15").parse()?;
    let torch_epochs: usize =
        env_or("SUPERMASK_TRAIN_TIME_TORCH_EPOCHS", &epochs.to_string()).parse()?;
    anyhow::ensure!(
        torch_epochs == epochs || (2..epochs).contains(&torch_epochs),
        "SUPERMASK_TRAIN_TIME_TORCH_EPOCHS={torch_epochs}: PyTorch runs all {epochs} epochs, or \
         at least 2 of them, so that their times show they are constant"
    );
    let subset = std::env::var("SUPERMASK_TRAIN_TIME_SUBSET").ok();
    let models = env_or("SUPERMASK_TRAIN_TIME_MODELS", "conv4,resnet20");
    let data = PathBuf::from(env_or(
        "SUPERMASK_DATA",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../data"),
    ));
    anyhow::ensure!(
        data.join("fashion-mnist").is_dir(),
        "no Fashion-MNIST under {} (set SUPERMASK_DATA to the data root)",
        data.display()
    );
    let mut sets = vec![
        "data.dataset=fashion-mnist".to_string(),
        format!("train.epochs={epochs}"),
    ];
    let th = threads.to_string();
    let fm = data.join("fashion-mnist").display().to_string();
    let mut common: Vec<String> = ["--data", &fm, "--epochs", &torch_epochs.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--threads".into(), th, "--seed".into(), "0".into()])
        .collect();
    if let Some(n) = &subset {
        sets.push(format!("data.train_subset={n}"));
        common.extend(["--train-subset".into(), n.clone()]);
    }
    println!(
        "workload: {epochs} epochs of Fashion-MNIST ({} training images), seed 0, {threads} \
         threads, denormals flushed; seconds = training + test evaluation summed over the epochs",
        subset.as_deref().unwrap_or("60000")
    );
    for w in WORKLOADS
        .iter()
        .filter(|w| models.split(',').any(|m| m == w.name))
    {
        let o = ours(w, &sets, &data)?;
        let p = torch(w, &common);
        let fmt_losses = |l: &[f64]| {
            l.iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{} signed, ours:    train loss per epoch {}",
            w.name,
            fmt_losses(&o.losses())
        );
        for (i, e) in o.epochs.iter().enumerate() {
            println!(
                "{} signed, ours:    epoch {:>2}: {:.1} s, {:.2}% remaining, test accuracy {:.2}%",
                w.name,
                i + 1,
                e.seconds,
                100.0 * e.remaining,
                100.0 * e.test_acc
            );
        }
        println!(
            "{} signed, ours:    {:.1} s in epochs ({:.1} s wall), last epoch {}",
            w.name,
            o.seconds(),
            o.wall,
            o.last()
        );
        let Some(p) = p else {
            println!("{} signed, pytorch: not run (see above)", w.name);
            continue;
        };
        println!(
            "{} signed, pytorch: train loss per epoch {}",
            w.name,
            fmt_losses(&p.losses())
        );
        let per_epoch: Vec<String> = p
            .epochs
            .iter()
            .map(|e| format!("{:.1}", e.seconds))
            .collect();
        println!(
            "{} signed, pytorch: {:.1} s in epochs ({:.1} s wall; per epoch {} s), last epoch {}",
            w.name,
            p.seconds(),
            p.wall,
            per_epoch.join(" "),
            p.last()
        );
        let verdict = match (
            unhealthy(&o.losses(), LOSS_BOUND),
            unhealthy(&p.losses(), LOSS_BOUND),
        ) {
            (None, None) => match torch_time(&p, torch_epochs, epochs) {
                Ok((seconds, how)) => format!(
                    "ratio {:.2} ({:.1} s / {seconds:.1} s; pytorch {how})",
                    o.seconds() / seconds,
                    o.seconds()
                ),
                Err(why) => format!("refused ({why})"),
            },
            (a, b) => format!(
                "refused (ours: {}; pytorch: {})",
                a.unwrap_or_else(|| "healthy".into()),
                b.unwrap_or_else(|| "healthy".into())
            ),
        };
        println!("{} signed, ours / pytorch time to train: {verdict}", w.name);
    }
    Ok(())
}
