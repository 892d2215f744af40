//! The built-in plugins of supermask. Each registers itself with
//! [`supermask_core::register_plugin!`] next to its definition and documents the equation of
//! the paper (Koster et al., 2022, "Signing the Supermask") it implements.
//!
//! - masks: [`masks::SignedMask`] (`signed`), [`masks::BinaryMask`] (`binary`),
//!   [`masks::BernoulliMask`] (`bernoulli`);
//! - thresholds: [`thresholds::Fixed`] (`fixed`), [`thresholds::InitialRate`]
//!   (`initial-rate`), [`thresholds::Adaptive`] (`adaptive`), [`thresholds::MaxFraction`]
//!   (`max-fraction`);
//! - initializers: [`inits::He`] (`he`), [`inits::Xavier`] (`xavier`), [`inits::Elu`] (`elu`),
//!   [`inits::Elus`] (`elus`), [`inits::XavierUniform`] (`xavier-uniform`),
//!   [`inits::ElusUniform`] (`elus-uniform`), [`inits::Lecun`] (`lecun`);
//! - losses: [`losses::CrossEntropy`] (`cross-entropy`), [`losses::ClippedCrossEntropy`]
//!   (`clipped-cross-entropy`).

pub mod inits;
pub mod losses;
pub mod masks;
pub mod thresholds;

/// Makes sure this crate is linked, so its `inventory` registrations exist. A binary that
/// names no item of this crate would otherwise drop them (inventory #7, typetag #34).
pub fn link() {
    std::hint::black_box(masks::SignedMask::default());
}
