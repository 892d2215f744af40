//! The paper's size metric (Tables 3 and 13): a masked layer's effective weight stored dense
//! as float32 against scipy's CSR of it (float32 data, int32 column indices, int32 row
//! pointers; a weight of rank > 2 is reshaped to `[shape[0], rest]` first).

/// Bytes of `numel` float32 values.
pub fn dense_f32_bytes(numel: usize) -> usize {
    4 * numel
}

/// Bytes of a CSR matrix with `rows` rows and `nnz` stored values: `4 nnz` data,
/// `4 nnz` indices and `4 (rows + 1)` row pointers.
pub fn csr_bytes(rows: usize, nnz: usize) -> usize {
    4 * nnz + 4 * nnz + 4 * (rows + 1)
}

/// `1 - compressed / dense`: the share of bytes saved.
pub fn compression_rate(dense: usize, compressed: usize) -> f64 {
    1.0 - compressed as f64 / dense as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy.sparse.csr_matrix of a float32 300x784 matrix with 5,000 non-zeros:
    /// data.nbytes 20,000 + indices.nbytes 20,000 + indptr.nbytes 1,204 = 41,204.
    #[test]
    fn csr_counts_data_indices_and_row_pointers() {
        assert_eq!(csr_bytes(300, 5000), 41_204);
        assert_eq!(dense_f32_bytes(300 * 784), 940_800);
        let rate = compression_rate(940_800, 41_204);
        assert!((rate - (1.0 - 41_204.0 / 940_800.0)).abs() < 1e-15);
    }
}
