//! `sweep --emit slurm`: a sweep as one Slurm job array, one array task per run. Each task runs
//! its run's `supermask train ... --continue` command ([`crate::sweep::emit`]), so a task that
//! is killed and requeued (`#SBATCH --requeue`, a node failure, `scontrol requeue`) resumes its
//! run from the last checkpoint, and a task whose run is already finished does nothing: the
//! sweep directory ends with each run once, which `aggregate` and `report` read as usual.

use std::path::Path;
use supermask_core::Result;

/// Resources and options of the job array.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// `--cpus-per-task` (the commands' `--threads`).
    pub cpus_per_task: usize,
    /// `--time`, e.g. `02:00:00`.
    pub time: Option<String>,
    /// `--mem`, e.g. `4G`.
    pub mem: Option<String>,
    /// `--partition`.
    pub partition: Option<String>,
    /// Further `#SBATCH` options, verbatim (e.g. `--account=lab`).
    pub extra: Vec<String>,
}

/// Quotes `s` for bash inside single quotes.
fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sbatch` script running `commands` as a job array named `name`; task logs go to
/// `out/slurm-JOB_TASK.out`.
pub fn job_array_script(
    name: &str,
    out: &Path,
    commands: &[String],
    o: &SlurmOptions,
) -> Result<String> {
    anyhow::ensure!(!commands.is_empty(), "the sweep has no runs to submit");
    anyhow::ensure!(o.cpus_per_task > 0, "--slurm-cpus must be > 0");
    let mut options = vec![
        format!("--job-name={name}"),
        format!("--array=0-{}", commands.len() - 1),
        format!(
            "--output={}",
            std::path::absolute(out)?.join("slurm-%A_%a.out").display()
        ),
        format!("--cpus-per-task={}", o.cpus_per_task),
        "--requeue".to_string(),
    ];
    for (flag, value) in [
        ("time", &o.time),
        ("mem", &o.mem),
        ("partition", &o.partition),
    ] {
        if let Some(v) = value {
            options.push(format!("--{flag}={v}"));
        }
    }
    for e in &o.extra {
        anyhow::ensure!(
            e.starts_with("--"),
            "--sbatch {e}: expected an sbatch option such as --account=NAME"
        );
        options.push(e.clone());
    }
    for opt in &options {
        let spaced = !opt.starts_with("--output=") && opt.contains(char::is_whitespace);
        anyhow::ensure!(
            !opt.contains(['\n', '\r']) && !spaced,
            "sbatch option `{opt}` contains white space or a line break"
        );
    }
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# A supermask sweep as a Slurm job array: one task per run, {} runs. Submit with\n\
         # `sbatch THIS_FILE`; a requeued or resubmitted task continues its run from its last\n\
         # checkpoint and a finished run is skipped.\n",
        commands.len()
    ));
    for opt in &options {
        s.push_str(&format!("#SBATCH {opt}\n"));
    }
    s.push_str("set -euo pipefail\ncommands=(\n");
    for c in commands {
        s.push_str(&format!("  {}\n", single_quoted(c)));
    }
    s.push_str(")\nexec bash -c \"${commands[$SLURM_ARRAY_TASK_ID]}\"\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_array_task_per_command_with_the_resources() {
        let o = SlurmOptions {
            cpus_per_task: 2,
            time: Some("01:00:00".into()),
            extra: vec!["--account=lab".into()],
            ..Default::default()
        };
        let cmds = vec!["a --out 'x y'".to_string(), "b".to_string()];
        let s = job_array_script("sm", Path::new("/sweeps/s"), &cmds, &o).unwrap();
        for line in [
            "#SBATCH --array=0-1",
            "#SBATCH --cpus-per-task=2",
            "#SBATCH --time=01:00:00",
            "#SBATCH --account=lab",
            "#SBATCH --requeue",
            "#SBATCH --output=/sweeps/s/slurm-%A_%a.out",
            r"  'a --out '\''x y'\'''",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} missing:\n{s}");
        }
        let bad = SlurmOptions {
            cpus_per_task: 1,
            time: Some("1:00\n#SBATCH --x".into()),
            ..Default::default()
        };
        assert!(job_array_script("sm", Path::new("/s"), &cmds, &bad).is_err());
        assert!(job_array_script("sm", Path::new("/s"), &[], &o).is_err());
    }
}
