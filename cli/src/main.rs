//! The `supermask` binary: the library's command line ([`supermask_cli::main`]).

/// mimalloc reuses freed activation-sized buffers instead of returning them to the OS and
/// faulting fresh zeroed pages in at the next step (about 20% of a step with glibc's malloc
/// on the FCN, docs/results/bench.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    supermask_cli::main_with(&[
        supermask_edge_popup::link,
        supermask_biprop::link,
        supermask_global_topk::link,
    ])
}
