//! Where one module's `[out, in]` update lands in a stored tensor ([`Placement`]: the whole
//! tensor, or one expert's slice of a fused expert tensor, rows or columns, contiguous or
//! interleaved) and adding the update to the tensor's bytes in their own dtype
//! ([`add_update`]): f32 as is, f16 / bf16 widened to f32, summed in f32 and rounded back to
//! the nearest value, ties to even.

/// The float dtypes a merge can write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
}

impl StoredDtype {
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(Self::F32),
            safetensors::Dtype::F16 => Some(Self::F16),
            safetensors::Dtype::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// The little-endian element at the start of `bytes`, widened to f32 (exactly).
    fn read(self, bytes: &[u8]) -> f32 {
        match self {
            Self::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            Self::F16 => half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
            Self::BF16 => half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
        }
    }

    /// Stores `value` at the start of `bytes`, rounded to nearest-even for f16 / bf16.
    fn write(self, value: f32, bytes: &mut [u8]) {
        match self {
            Self::F32 => bytes[..4].copy_from_slice(&value.to_le_bytes()),
            Self::F16 => bytes[..2].copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
            Self::BF16 => bytes[..2].copy_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
        }
    }
}

/// Element `(o, i)` of a `[rows, cols]` update is element `offset + o·row_stride +
/// i·col_stride` of the tensor, counting elements of the row-major tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Placement {
    /// The whole of a `[rows, cols]` matrix.
    pub fn whole(rows: usize, cols: usize) -> Self {
        Self {
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// One past the last element the placement touches (0 for an empty update).
    pub fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// Adds `scale · update` (row-major `[placement.rows, placement.cols]`, f32) to the elements of
/// the tensor stored in `bytes` (little-endian `dtype`) that `placement` names. Each element is
/// widened to f32, summed and rounded back once.
///
/// Panics when the update's length or the placement does not fit the tensor; callers check
/// shapes before any data is read.
pub fn add_update(
    bytes: &mut [u8],
    dtype: StoredDtype,
    placement: Placement,
    update: &[f32],
    scale: f32,
) {
    let size = dtype.size_in_bytes();
    assert_eq!(update.len(), placement.rows * placement.cols);
    assert!(placement.end() * size <= bytes.len());
    for (o, row) in update.chunks_exact(placement.cols.max(1)).enumerate() {
        let row_start = placement.offset + o * placement.row_stride;
        for (i, &u) in row.iter().enumerate() {
            let at = (row_start + i * placement.col_stride) * size;
            let element = &mut bytes[at..at + size];
            let merged = dtype.read(element) + scale * u;
            dtype.write(merged, element);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect()
    }

    fn bf16_values(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn f32_values(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn bf16_sums_round_to_nearest_with_ties_to_even() {
        // bf16 keeps 7 fraction bits: around 1.0 the spacing is 2⁻⁷.
        let ulp = 2f32.powi(-7);
        let mut bytes = bf16_bytes(&[1.0, 1.0, 1.0, 1.0 + ulp, -2.0]);
        let update = [
            ulp / 2.0,         // a tie between 1 (even) and 1 + ulp (odd): stays 1
            1.5 * ulp,         // a tie between 1 + ulp (odd) and 1 + 2 ulp (even): up
            0.6 * ulp,         // nearer 1 + ulp
            ulp / 2.0,         // a tie from 1 + ulp (odd) towards 1 + 2 ulp (even): up
            -0.49 * 2.0 * ulp, // -2 has spacing 2 ulp: nearer -2 than -2 - 2 ulp
        ];
        add_update(
            &mut bytes,
            StoredDtype::BF16,
            Placement::whole(1, 5),
            &update,
            1.0,
        );
        assert_eq!(
            bf16_values(&bytes),
            [1.0, 1.0 + 2.0 * ulp, 1.0 + ulp, 1.0 + 2.0 * ulp, -2.0]
        );
    }

    #[test]
    fn f16_sums_round_to_nearest_with_ties_to_even() {
        // f16 keeps 10 fraction bits.
        let ulp = 2f32.powi(-10);
        let mut bytes: Vec<u8> = [1.0f32, 1.0]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        add_update(
            &mut bytes,
            StoredDtype::F16,
            Placement::whole(2, 1),
            &[ulp / 2.0, 1.5 * ulp],
            1.0,
        );
        let got: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(got, [1.0, 1.0 + 2.0 * ulp]);
    }

    #[test]
    fn f32_sums_are_exact_f32_arithmetic_and_scaled() {
        let mut bytes = f32_bytes(&[0.1, 0.2, 0.3, 0.4]);
        add_update(
            &mut bytes,
            StoredDtype::F32,
            Placement::whole(2, 2),
            &[1.0, 2.0, 3.0, 4.0],
            0.5,
        );
        assert_eq!(
            f32_values(&bytes),
            [0.1 + 0.5, 0.2 + 1.0, 0.3 + 1.5, 0.4 + 2.0]
        );
    }

    #[test]
    fn an_expert_slice_of_a_fused_tensor_changes_only_its_own_elements() {
        // [E = 2, 2·I = 4, H = 3], gate rows 0..2 then up rows 2..4 of each expert: expert 1's
        // up rows are elements 12 + 6 .. 12 + 12.
        let (i, h) = (2, 3);
        let mut bytes = f32_bytes(&[0.0; 24]);
        let up_of_expert_1 = Placement {
            offset: 2 * i * h + i * h,
            rows: i,
            cols: h,
            row_stride: h,
            col_stride: 1,
        };
        let update: Vec<f32> = (1..=6).map(|v| v as f32).collect();
        add_update(&mut bytes, StoredDtype::F32, up_of_expert_1, &update, 1.0);
        let got = f32_values(&bytes);
        assert_eq!(&got[18..24], update.as_slice());
        assert!(got[..18].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn an_interleaved_transposed_slice_lands_on_every_other_column() {
        // [E = 1, H = 2, 2·I = 4] with gate on the even columns: the gate update [I = 2, H = 2]
        // (rows are output features) goes to column 2·o of row i.
        let mut bytes = f32_bytes(&[0.0; 8]);
        let gate = Placement {
            offset: 0,
            rows: 2,
            cols: 2,
            row_stride: 2,
            col_stride: 4,
        };
        assert_eq!(gate.end(), 7);
        add_update(
            &mut bytes,
            StoredDtype::F32,
            gate,
            &[1.0, 2.0, 3.0, 4.0],
            1.0,
        );
        // update[o][i] at [i][2·o]: row 0 = [u00, 0, u10, 0], row 1 = [u01, 0, u11, 0].
        assert_eq!(f32_values(&bytes), [1.0, 0.0, 3.0, 0.0, 2.0, 0.0, 4.0, 0.0]);
    }
}
