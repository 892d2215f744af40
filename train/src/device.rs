//! Choosing the compute device at run time (`--device cpu|cuda`).

use anyhow::Context;
use candle_core::Device;
use supermask_core::Result;

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The device called `name`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("unknown device `{name}`; use cpu, cuda or cuda:N"))?,
        None => anyhow::bail!("unknown device `{name}`; use cpu, cuda or cuda:N"),
    };
    anyhow::ensure!(
        CUDA_BUILT,
        "this supermask was built without CUDA support; rebuild with \
         `cargo build --release -p supermask-cli --features cuda` (needs the CUDA toolkit) or use --device cpu"
    );
    Device::new_cuda(ordinal).with_context(|| {
        format!("cannot open CUDA device {ordinal} (is there an NVIDIA GPU and driver?)")
    })
}
