//! Targets other than x86-64 have no direct 3x3 kernel (it is written with AVX2 and FMA
//! vectors): [`Direct3`] has no values, [`Direct3::new`] declines every geometry, and the
//! convolutions run by im2col and GEMM.

/// Zeros after the padded planes of the direct kernels' layout (as on x86-64, where it is
/// the last tile's overrun), so that padded sample layouts have one size on every target.
pub(super) const PAD_TAIL: usize = 18;

/// Uninhabited: no geometry runs the direct kernel on this target.
#[derive(Clone, Copy, Debug)]
pub(super) enum Direct3 {}

#[allow(clippy::unused_self)]
impl Direct3 {
    /// Always `None` on this target.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        _c_in: usize,
        _c_out: usize,
        _h: usize,
        _w: usize,
        _k: usize,
        _stride: usize,
        _pad: usize,
    ) -> Option<Self> {
        None
    }
    pub(super) fn q(&self) -> usize {
        match *self {}
    }
    pub(super) fn tap<'a>(&self, _: &'a [f32], _: u32) -> &'a [f32] {
        match *self {}
    }
    pub(super) fn compact(&self, _: &[f32], _: usize, _: usize, _: &mut [f32]) {
        match *self {}
    }
    pub(super) fn padded_len(&self, _: usize) -> usize {
        match *self {}
    }
    pub(super) fn working_set(&self) -> usize {
        match *self {}
    }
    pub(super) fn scratch_len(&self, _: usize) -> usize {
        match *self {}
    }
    pub(super) fn pad(&self, _: &[f32], _: usize, _: &mut [f32]) {
        match *self {}
    }
    pub(super) fn zero_borders(&self, _: &mut [f32], _: usize) {
        match *self {}
    }
    pub(super) fn pack_forward(&self, _: &[f32]) -> Vec<f32> {
        match *self {}
    }
    pub(super) fn pack_weights(_: usize, _: usize, _: &[f32]) -> Option<Vec<f32>> {
        None
    }
    pub(super) fn packed_len(&self) -> usize {
        match *self {}
    }
    pub(super) fn pack_input_grad(&self, _: &[f32]) -> Vec<f32> {
        match *self {}
    }
    pub(super) fn conv(
        &self,
        _: &[f32],
        _: usize,
        _: usize,
        _: &[f32],
        _: &mut [f32],
        _: &mut [f32],
    ) {
        match *self {}
    }
    pub(super) fn weight_grad(&self, _: &[f32], _: &[f32], _: &mut [f32]) {
        match *self {}
    }
}
