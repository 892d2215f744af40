//! What a parallel section costs after a serial stretch, with rayon's idle threads asleep and
//! with them kept spinning ([`supermask_core::awake::KeepAwake`], as the training loop does):
//! `cargo run --release -p supermask-benches --example join_latency` (threads:
//! `SUPERMASK_BENCH_THREADS`, default 2). Each round spins `gap` us on the calling thread, then
//! joins two 100 us halves; it prints the mean time of the join (100 us when the other thread
//! takes its half at once).

use std::time::{Duration, Instant};
use supermask_core::awake::KeepAwake;

/// Busy-waits `us` microseconds.
fn spin(us: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// Mean microseconds of `rounds` joins of two 100 us halves, each after `gap` us of serial work.
fn joins(gap: u64, rounds: u32, awake: Option<&KeepAwake>) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        if let Some(a) = awake {
            a.keep();
        }
        spin(gap);
        let t = Instant::now();
        rayon::join(|| spin(100), || spin(100));
        total += t.elapsed();
    }
    total.as_secs_f64() * 1e6 / f64::from(rounds)
}

fn main() {
    let threads = supermask_benches::set_threads();
    println!("{threads} threads; mean time of a join of two 100 us halves after a serial gap");
    println!(
        "{:>8} {:>14} {:>14}",
        "gap [us]", "asleep [us]", "spinning [us]"
    );
    for gap in [0, 20, 50, 100, 200, 1000] {
        let asleep = joins(gap, 2000, None);
        let awake = KeepAwake::new();
        let spinning = joins(gap, 2000, Some(&awake));
        drop(awake);
        println!("{gap:>8} {asleep:>14.1} {spinning:>14.1}");
    }
}
