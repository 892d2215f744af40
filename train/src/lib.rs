//! The supermask training library: everything between a config file and a finished run
//! directory, for the `supermask` binary, benchmarks, tests and researchers' own binaries.
//!
//! - [`config::RunConfig`]: the experiment file (model, masking, data, optimizer, schedule,
//!   loss, training options), with `--set` overrides.
//! - [`trainer::Trainer`]: one model with its optimizer; [`Trainer::fit`] trains epochs and
//!   calls [`callbacks::Callback`]s (threshold updates, progress, logging, metrics file,
//!   checkpoints, the divergence guard), which a caller can extend.
//! - [`run`]: run directories (`train`, `eval`, resume, locks); [`checkpoint`]: the named
//!   training state; [`sweep`]: grids of runs with restartable workers.

pub mod callbacks;
pub mod checkpoint;
pub mod config;
pub mod conformance;
pub mod device;
pub mod guard;
pub mod metrics;
pub mod provenance;
pub mod run;
pub mod rundir;
pub mod slurm;
pub mod sweep;
pub mod tensorboard;
pub mod trainer;

pub use config::RunConfig;
pub use trainer::Trainer;

/// Links the plugin and model crates so every registration exists.
pub fn link_plugins() {
    supermask_plugins::link();
    supermask_models::link();
}

/// Sets up the CPU thread pools before any tensor work; returns the thread count the fused
/// kernels use. [`configure_threads_with`] with no per-thread setup.
pub fn configure_threads(threads: Option<usize>) -> usize {
    configure_threads_with(threads, || {})
}

/// Sets up the CPU thread pools before any tensor work, running `per_thread` on the calling
/// thread and on every worker rayon starts (the benchmarks flush denormals there); returns the
/// thread count the fused kernels use.
///
/// - `threads` (e.g. `--threads`) sets rayon's global pool, where the fused kernels, candle's
///   GEMM and convolutions run (`RAYON_NUM_THREADS` when not given; default: all cores).
/// - The calling thread is the pool's first worker (rayon's `use_current_thread`), so `n`
///   threads means `n` threads: the training loop's parallel sections start on the thread
///   that runs the loop instead of waking a worker and sleeping until it is done. With a
///   separate pool, two threads on two cores were three, and every GEMM and element-wise pass
///   paid a hand-over; measured on the FCN step (with the GEMM split over row blocks): 1.46
///   against 1.97 ms, medians of ten alternating runs (`docs/results/fcn-threads.md`).
/// - candle's separate element-wise pool is kept to one thread (no worker) unless
///   `CANDLE_NUM_THREADS` is set: its workers spin-wait between ops and then compete with the
///   rayon threads for the same cores. Measured on the 2-core development machine: the FCN
///   epoch takes 1.17 s with one candle thread against 1.26-1.48 s with two, the dense FCN
///   epoch 0.96 s against 1.90 s (docs/results/bench.md).
///
/// Must run before the first tensor operation, once, on the thread that will run the work:
/// when rayon's global pool already exists (a library caller used it first) that pool is kept,
/// with a warning, and its thread count is returned.
pub fn configure_threads_with(
    threads: Option<usize>,
    per_thread: impl Fn() + Send + Sync + 'static,
) -> usize {
    if let Some(n) = threads.filter(|&n| n > 0) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let n = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    per_thread();
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .start_handler(move |_| per_thread())
        .build_global();
    match built {
        Ok(()) => n,
        Err(e) => {
            tracing::warn!("rayon's thread pool was set up before configure_threads: {e}");
            rayon::current_num_threads()
        }
    }
}

/// mimalloc's option index of `purge_delay` (`mi_option_purge_delay` in `mimalloc.h`, the same
/// in its v2 and v3 headers; libmimalloc-sys has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc (the CLI's and benchmarks' global allocator) never to return freed memory
/// to the OS. A training step frees and reallocates the same activation-sized buffers; with
/// the default 10 ms purge delay they come back as fresh pages the kernel zeroes on first
/// touch (15% of a ResNet20 step in `perf`). Measured: ResNet20 signed step 0.73 -> 0.55 s,
/// Conv4 0.80 -> 0.64 s (docs/results/bench.md). The cost: the process keeps its peak memory.
#[allow(unsafe_code)]
pub fn configure_allocator() {
    // SAFETY: `mi_option_set` stores an option value; it is valid for any option index and
    // value, at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
