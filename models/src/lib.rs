//! Model families of the signed-Supermask paper. Each is an [`supermask_core::Architecture`]
//! written by its spec (`ModelSpec::architecture`); training builds it as a
//! [`supermask_core::Network`] whose layers come from a [`supermask_core::LayerFactory`], so a
//! model names shapes, never a mask type, and the same description builds the signed
//! Supermask, any other mask plugin and the dense baseline, and runs in the inference engine.

pub mod conv;
pub mod fcn;
pub mod resnet;

pub use conv::{Conv2Spec, Conv4Spec, Conv6Spec, Conv8Spec};
pub use fcn::FcnSpec;
pub use resnet::{ResNet110Spec, ResNet20Spec, ResNet56Spec};

/// Makes sure this crate is linked, so its model registrations exist.
pub fn link() {
    std::hint::black_box(FcnSpec::default());
}
