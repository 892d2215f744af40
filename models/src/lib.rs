//! Model families of the signed-Supermask paper, built only from `supermask-core` layers
//! obtained from a [`supermask_core::LayerFactory`]: a model names shapes, never a mask type,
//! so the same code builds the signed Supermask, any other mask plugin and the dense baseline.

pub mod fcn;

pub use fcn::{Fcn, FcnSpec};

/// Makes sure this crate is linked, so its model registrations exist.
pub fn link() {
    std::hint::black_box(FcnSpec::default());
}
