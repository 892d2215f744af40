#![allow(missing_docs)]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    supermask_benches::set_threads();
    let m = supermask_export::format::read_file(std::path::Path::new("/tmp/elus0.ssm")).unwrap();
    let e = supermask_export::Engine::new(&m).unwrap();
    let x = vec![0.5f32; 256 * 784];
    let t0 = std::time::Instant::now();
    for _ in 0..2000 {
        std::hint::black_box(e.forward(&x, 256).unwrap());
    }
    println!("{:.1} us", t0.elapsed().as_secs_f64() / 2000.0 * 1e6);
}
