//! Keeps rayon's other threads looking for work between the parallel sections of a training
//! step, as OpenMP's workers spin for a while before they sleep.
//!
//! A training step is a chain of parallel sections (each GEMM, each element-wise pass) with
//! short serial stretches between them (candle's bookkeeping, the loss, the tape). rayon's idle
//! workers give up after about 32 rounds of `yield` (30-60 us here) and sleep on a futex; the
//! next section then starts with one thread while the other is woken. On the 2-core KVM
//! machine a join of two 100 us halves took 101-103 us with the other thread spinning against
//! 113-141 us after a 20-1000 us serial gap with it left to sleep (the `join_latency` example
//! of `supermask-benches`), and the FCN step woke a sleeping worker about 8 times
//! (`docs/results/fcn-threads.md`).
//!
//! [`KeepAwake::keep`] at the start of each step makes every other thread of the current pool
//! run a loop that takes pending jobs ([`rayon::yield_now`]) and spins between them. A loop
//! ends when its guard is dropped or after [`IDLE`] without a job (the caller then does
//! something long and serial: evaluation's data copies, a checkpoint), and the next `keep`
//! starts it again. Which thread runs a job never changes what it computes, so the results
//! are unchanged; only the hand-over is faster.
//!
//! It stays off where spinning would take a core from the caller: a one-thread pool, or more
//! threads than the machine has cores.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a spinning thread waits for a job before it returns to rayon's own idle loop
/// (which sleeps). Longer than any serial stretch inside a step of the paper's nets, short
/// enough that a long serial phase costs the other cores at most this much spinning.
pub const IDLE: Duration = Duration::from_millis(1);

/// The spinning loops' shared state.
#[derive(Default)]
struct Shared {
    /// Set when the guard is dropped: every loop returns.
    stop: AtomicBool,
    /// Loops started and not yet returned (including those queued but not yet running).
    live: AtomicUsize,
}

/// A guard that keeps the current rayon pool's other threads spinning for work while it lives
/// and [`KeepAwake::keep`] is called often enough (see the module docs).
pub struct KeepAwake {
    shared: Arc<Shared>,
    /// Whether this pool may spin at all.
    enabled: bool,
    /// How long a loop waits for a job ([`IDLE`]).
    idle: Duration,
}

impl KeepAwake {
    /// A guard for the current thread's rayon pool (the global one outside any pool). Starts
    /// nothing until [`KeepAwake::keep`].
    pub fn new() -> Self {
        // Read once: on Linux it reads the cgroup's CPU quota from files.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores =
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let threads = rayon::current_num_threads();
        Self {
            shared: Arc::default(),
            enabled: threads > 1 && threads <= cores,
            idle: IDLE,
        }
    }

    /// Starts the spinning loops again if they have all returned (after [`IDLE`] without
    /// work), else does nothing. Cheap: one atomic load in the common case.
    pub fn keep(&self) {
        if !self.enabled || self.shared.live.load(Ordering::Acquire) > 0 {
            return;
        }
        let me = rayon::current_thread_index();
        let others = rayon::current_num_threads() - usize::from(me.is_some());
        self.shared.live.store(others, Ordering::Release);
        let (shared, idle) = (Arc::clone(&self.shared), self.idle);
        rayon::spawn_broadcast(move |ctx| {
            if Some(ctx.index()) == me {
                return;
            }
            spin(&shared, idle);
            shared.live.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Default for KeepAwake {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Runs pending jobs of the pool until `stop` or `idle` without one.
fn spin(shared: &Shared, idle: Duration) {
    let mut last = Instant::now();
    let mut rounds = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last = Instant::now();
            rounds = 0;
            continue;
        }
        std::hint::spin_loop();
        rounds += 1;
        // The clock is read every 64 idle rounds only.
        if rounds.is_multiple_of(64) && last.elapsed() > idle {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (at most 5 s) until no loop is live.
    fn wait_until_returned(shared: &Shared, why: &str) {
        let t0 = Instant::now();
        while shared.live.load(Ordering::Acquire) > 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "{why}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn guard(idle: Duration) -> KeepAwake {
        KeepAwake {
            shared: Arc::default(),
            enabled: true,
            idle,
        }
    }

    #[test]
    fn loops_run_pending_work_and_return_when_idle_or_dropped() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            // A loop that would wait an hour for work: it can only return when dropped.
            let awake = guard(Duration::from_secs(3600));
            awake.keep();
            assert_eq!(awake.shared.live.load(Ordering::Acquire), 1);
            // The other thread, inside that loop, takes a pending job: the caller's half of the
            // join waits until the other half has started, so only that thread can run it.
            let started = AtomicBool::new(false);
            let me = rayon::current_thread_index();
            let ((), other) = rayon::join(
                || {
                    let t0 = Instant::now();
                    while !started.load(Ordering::Acquire) {
                        assert!(
                            t0.elapsed() < Duration::from_secs(5),
                            "the spinning thread never took the pending job"
                        );
                        std::hint::spin_loop();
                    }
                },
                || {
                    started.store(true, Ordering::Release);
                    rayon::current_thread_index()
                },
            );
            assert_ne!(other, me);
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(awake.shared.live.load(Ordering::Acquire), 1);
            let shared = Arc::clone(&awake.shared);
            drop(awake);
            wait_until_returned(&shared, "the loop ignored the drop");
            // A loop returns after its idle time without work, and `keep` starts it again.
            let awake = guard(Duration::from_millis(1));
            awake.keep();
            wait_until_returned(&awake.shared, "the loop never went idle");
            awake.keep();
            assert_eq!(awake.shared.live.load(Ordering::Acquire), 1);
            wait_until_returned(&awake.shared, "the restarted loop never went idle");
        });
    }
}
