//! `supermask sweep`: plan a grid, then train it here with workers or print it for a
//! scheduler (`--emit`: one command per run, or an sbatch job-array script).

use crate::app::print_lines;
use std::path::{Path, PathBuf};
use supermask_datasets::resolve_data_dir;
use supermask_train::{slurm, sweep};

/// The arguments of `supermask sweep`.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// The grid file (TOML): `presets` or `base`, `seeds`, optional `[set]` and `[grid]`.
    #[arg(long)]
    pub config: PathBuf,
    /// Runs trained at once; each gets --threads threads (default: cores / workers).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Output directory (default: sweeps/<grid file name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Data root (default: $SUPERMASK_DATA, else ./data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print instead of running: `commands` (a bare `--emit`), one independent
    /// `supermask train ... --continue` command per run (GNU parallel, any scheduler), or
    /// `slurm`, an sbatch job-array script with one array task per run.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "commands", value_name = "FORMAT")]
    pub emit: Option<EmitFormat>,
    /// With `--emit slurm`: CPUs per array task, also each run's --threads (default:
    /// --threads, else 1).
    #[arg(long, value_name = "N")]
    pub slurm_cpus: Option<usize>,
    /// With `--emit slurm`: the tasks' time limit (`#SBATCH --time`, e.g. 02:00:00).
    #[arg(long, value_name = "TIME")]
    pub slurm_time: Option<String>,
    /// With `--emit slurm`: the tasks' memory (`#SBATCH --mem`, e.g. 4G).
    #[arg(long, value_name = "MEM")]
    pub slurm_mem: Option<String>,
    /// With `--emit slurm`: the partition (`#SBATCH --partition`).
    #[arg(long, value_name = "NAME")]
    pub slurm_partition: Option<String>,
    /// With `--emit slurm`: a further `#SBATCH` option, verbatim (repeatable), e.g.
    /// `--sbatch=--account=lab`.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
}

/// What `sweep --emit` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmitFormat {
    /// One shell command per run.
    Commands,
    /// An sbatch job-array script.
    Slurm,
}

/// Runs `supermask sweep` with the global `--threads`.
pub fn run(args: SweepArgs, threads: Option<usize>) -> anyhow::Result<()> {
    let SweepArgs {
        config,
        workers,
        out,
        data,
        emit,
        slurm_cpus,
        slurm_time,
        slurm_mem,
        slurm_partition,
        sbatch,
    } = args;
    let plan = sweep::plan(&config)?;
    let out = out.unwrap_or_else(|| {
        let stem = config.file_stem().unwrap_or_default().to_string_lossy();
        PathBuf::from(format!("sweeps/{stem}"))
    });
    let slurm_flags = slurm_cpus.is_some()
        || slurm_time.is_some()
        || slurm_mem.is_some()
        || slurm_partition.is_some()
        || !sbatch.is_empty();
    anyhow::ensure!(
        !slurm_flags || emit == Some(EmitFormat::Slurm),
        "--slurm-cpus, --slurm-time, --slurm-mem, --slurm-partition and --sbatch apply \
         only to --emit slurm"
    );
    // What --emit prints is made (and checked) before the plan is written.
    let emitted = match emit {
        None => None,
        Some(EmitFormat::Commands) => Some(sweep::emit(&plan, &out, data.as_deref(), threads)?),
        Some(EmitFormat::Slurm) => {
            // Checked against the compute node's cores when each task starts.
            let cpus = slurm_cpus.or(threads).unwrap_or(1);
            let commands = sweep::emit(&plan, &out, data.as_deref(), Some(cpus))?;
            let name = format!(
                "supermask-{}",
                out.file_name().unwrap_or_default().to_string_lossy()
            );
            let options = slurm::SlurmOptions {
                cpus_per_task: cpus,
                time: slurm_time,
                mem: slurm_mem,
                partition: slurm_partition,
                extra: sbatch,
            };
            let script = slurm::job_array_script(&name, &out, &commands, &options)?;
            Some(script.lines().map(str::to_string).collect())
        }
    };
    let Some(lines) = emitted else {
        return run_here(&config, &plan, &out, data, workers, threads);
    };
    sweep::write_plan(&out, &plan)?;
    print_lines(&lines)
}

/// Trains the sweep's runs on this machine with `workers` workers of `threads` threads each.
fn run_here(
    config: &Path,
    plan: &sweep::Plan,
    out: &Path,
    data: Option<PathBuf>,
    workers: usize,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    anyhow::ensure!(workers > 0, "--workers must be at least 1");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = threads.unwrap_or((cores / workers).max(1));
    anyhow::ensure!(
        workers.checked_mul(per).is_some_and(|t| t <= cores.max(workers)),
        "{workers} workers x {per} threads exceeds this machine's {cores} cores; lower --workers or --threads"
    );
    let data_dir = resolve_data_dir(data.as_deref());
    sweep::check_data(plan, out, &data_dir)?;
    sweep::write_plan(out, plan)?;
    tracing::info!(
        "sweep {}: {} runs into {} with {workers} workers x {per} threads",
        config.display(),
        plan.runs.len(),
        out.display()
    );
    let report = sweep::execute(plan, out, &data_dir, workers, per)?;
    println!(
        "{}: {} runs trained, {} already finished, {} failed",
        out.display(),
        report.trained,
        report.skipped,
        report.failed.len()
    );
    if !report.failed.is_empty() {
        let list: Vec<String> = report
            .failed
            .iter()
            .map(|(d, e)| format!("{d}: {e}"))
            .collect();
        anyhow::bail!(
            "{} of {} runs failed; rerun the same command to retry them: {}",
            report.failed.len(),
            plan.runs.len(),
            list.join("; ")
        );
    }
    Ok(())
}
