//! Runs the sparse ternary engine on an `.ssm` file in a loop, for `perf record`:
//! `cargo run --release -p supermask-benches --example profile_infer -- FILE [BATCH] [ITERS]`
//! (FILE `generated`: the infer bench's generated FCN; `conv2:D`: its generated Conv2 with
//! share `D` of every layer kept; `resnet20`: the infer bench's ResNet20, the Table 4 preset
//! untrained at the paper's 21.13% kept).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use supermask_benches::{
    generated_conv2, generated_fcn, median_time, paper_resnet20, set_threads, unit_values,
};
use supermask_export::{format, Engine};

fn main() {
    let threads = set_threads();
    let args: Vec<String> = std::env::args().collect();
    let m = match args.get(1).map(String::as_str) {
        None | Some("generated") => generated_fcn(),
        Some(conv) if conv.starts_with("conv2:") => {
            generated_conv2(conv["conv2:".len()..].parse().expect("conv2:DENSITY"))
        }
        Some("resnet20") => paper_resnet20(&candle_core::Device::Cpu).1,
        Some(path) => format::read_file(std::path::Path::new(path)).expect("model file"),
    };
    let batch: usize = args.get(2).map_or(256, |s| s.parse().unwrap());
    let iters: usize = args.get(3).map_or(2000, |s| s.parse().unwrap());
    let engine = Engine::new(&m).expect("engine");
    let x = unit_values(batch * engine.input_len(), 99);
    let t = median_time(iters, 20, || {
        std::hint::black_box(engine.forward(&x, batch).unwrap());
    });
    println!("batch {batch}, {threads} threads: {:.1} us median", t * 1e6);
}
