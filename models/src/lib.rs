//! Model families of the signed-Supermask paper, built only from `supermask-core` layers
//! obtained from a [`supermask_core::LayerFactory`]: a model names shapes, never a mask type,
//! so the same code builds the signed Supermask, any other mask plugin and the dense baseline.

pub mod conv;
pub mod fcn;
pub mod resnet;

pub use conv::{Conv2Spec, Conv4Spec, Conv6Spec, Conv8Spec, ConvNet};
pub use fcn::{Fcn, FcnSpec};
pub use resnet::{ResNet, ResNet110Spec, ResNet20Spec, ResNet56Spec};

/// Makes sure this crate is linked, so its model registrations exist.
pub fn link() {
    std::hint::black_box(FcnSpec::default());
}
