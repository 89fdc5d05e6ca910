//! A LoRA adapter's update, `scale · dropout(x) Aᵀ Bᵀ`, forward and backward in one op: the
//! dropped-out input, the low-rank product and the scaled result are never kept for the backward
//! pass, which recomputes the `(rows, rank)` product (rank 8 or so: cheap) and the dropout mask (a
//! hash of the seed and the element's position, as the attention kernel's).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::attention::{Dropout, Scalar};

/// Rows per parallel task.
const BLOCK: usize = 64;

/// One adapter applied to `rows` inputs: `x` is `(rows, input)`, `a` is `(rank, input)`, `b` is
/// `(output, rank)`, all row-major.
#[derive(Debug, Clone, Copy)]
pub struct LowRank {
    pub rows: usize,
    pub input: usize,
    pub output: usize,
    pub rank: usize,
    pub scale: f64,
    pub dropout: Option<Dropout>,
}

fn view<T>(data: &[T], rows: usize, cols: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols), data).unwrap_or_else(|e| panic!("lora: {e}"))
}

fn view_mut<T>(data: &mut [T], rows: usize, cols: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols), data).unwrap_or_else(|e| panic!("lora: {e}"))
}

impl LowRank {
    /// `dropout(x)` for rows `first..first + count` (a copy; `x` itself when nothing is dropped).
    fn dropped<'x, T: Scalar>(&self, x: &'x [T], first: usize, count: usize) -> std::borrow::Cow<'x, [T]> {
        let block = &x[first * self.input..(first + count) * self.input];
        let Some(draw) = self.dropout else { return std::borrow::Cow::Borrowed(block) };
        let mut values = block.to_vec();
        draw.apply((first * self.input) as u64, &mut values);
        std::borrow::Cow::Owned(values)
    }

    /// `scale · dropout(x) Aᵀ Bᵀ`, `(rows, output)`.
    pub fn forward<T: Scalar>(&self, x: &[T], a: &[T], b: &[T]) -> Vec<T> {
        let mut out = vec![T::zero(); self.rows * self.output];
        self.add_forward(x, a, b, &mut out);
        out
    }

    /// Adds `scale · dropout(x) Aᵀ Bᵀ` to `out` `(rows, output)`: the frozen linear's output,
    /// when the update is fused into it.
    pub fn add_forward<T: Scalar>(&self, x: &[T], a: &[T], b: &[T], out: &mut [T]) {
        assert_eq!(out.len(), self.rows * self.output, "lora: output of the wrong size");
        let (a, b) = (view(a, self.rank, self.input), view(b, self.output, self.rank));
        let scale = T::from(self.scale).unwrap_or_else(T::one);
        out.par_chunks_mut(BLOCK * self.output).enumerate().for_each(|(block, out)| {
            let count = out.len() / self.output.max(1);
            let dropped = self.dropped(x, block * BLOCK, count);
            let mut down = Array2::zeros((count, self.rank));
            general_mat_mul(T::one(), &view(&dropped, count, self.input), &a.t(), T::zero(), &mut down);
            general_mat_mul(scale, &down, &b.t(), T::one(), &mut view_mut(out, count, self.output));
        });
    }

    /// Gradients `(dx, dA, dB)` from the output's gradient `grad` `(rows, output)`.
    pub fn backward<T: Scalar>(&self, x: &[T], a: &[T], b: &[T], grad: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (a, b) = (view(a, self.rank, self.input), view(b, self.output, self.rank));
        let scale = T::from(self.scale).unwrap_or_else(T::one);
        let mut dx = vec![T::zero(); self.rows * self.input];
        // Each block's share of dA and dB, summed after.
        let partial: Vec<(Array2<T>, Array2<T>)> = dx
            .par_chunks_mut(BLOCK * self.input)
            .enumerate()
            .map(|(block, dx)| {
                let (first, count) = (block * BLOCK, dx.len() / self.input.max(1));
                let dropped = self.dropped(x, first, count);
                let dropped = view(&dropped, count, self.input);
                let grad = view(&grad[first * self.output..(first + count) * self.output], count, self.output);
                let mut down = Array2::zeros((count, self.rank));
                general_mat_mul(T::one(), &dropped, &a.t(), T::zero(), &mut down);
                // dB = scale · gᵀ down; d(down) = scale · g B; dA = d(down)ᵀ dropout(x).
                let mut db = Array2::zeros((self.output, self.rank));
                general_mat_mul(scale, &grad.t(), &down, T::zero(), &mut db);
                let mut d_down = Array2::zeros((count, self.rank));
                general_mat_mul(scale, &grad, &b, T::zero(), &mut d_down);
                let mut da = Array2::zeros((self.rank, self.input));
                general_mat_mul(T::one(), &d_down.t(), &dropped, T::zero(), &mut da);
                // dx = (d(down) A) ∘ the dropout mask.
                general_mat_mul(T::one(), &d_down, &a, T::zero(), &mut view_mut(dx, count, self.input));
                if let Some(draw) = self.dropout {
                    draw.apply((first * self.input) as u64, dx);
                }
                (da, db)
            })
            .collect();
        let mut da = Array2::<T>::zeros((self.rank, self.input));
        let mut db = Array2::<T>::zeros((self.output, self.rank));
        for (a_part, b_part) in partial {
            da.zip_mut_with(&a_part, |s, &p| *s = *s + p);
            db.zip_mut_with(&b_part, |s, &p| *s = *s + p);
        }
        (dx, da.into_raw_vec_and_offset().0, db.into_raw_vec_and_offset().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_one_update_is_the_outer_product_worked_by_hand() {
        // x = [1, 2], A = [[3, 4]] (rank 1), B = [[5], [6]]: x·Aᵀ = 11, then ·Bᵀ = [55, 66], × 0.5.
        let lora = LowRank { rows: 1, input: 2, output: 2, rank: 1, scale: 0.5, dropout: None };
        assert_eq!(lora.forward(&[1.0f64, 2.0], &[3.0, 4.0], &[5.0, 6.0]), vec![27.5, 33.0]);
        // With gradient g = [1, 1]: dB = 0.5 · g · 11 = [5.5, 5.5]; d(down) = 0.5 · (5 + 6) = 5.5;
        // dA = 5.5 · x = [5.5, 11]; dx = 5.5 · A = [16.5, 22].
        let (dx, da, db) = lora.backward(&[1.0f64, 2.0], &[3.0, 4.0], &[5.0, 6.0], &[1.0, 1.0]);
        assert_eq!((dx, da, db), (vec![16.5, 22.0], vec![5.5, 11.0], vec![5.5, 5.5]));
        // Added to a frozen linear's output [1, -1] instead of written.
        let mut out = vec![1.0f64, -1.0];
        lora.add_forward(&[1.0f64, 2.0], &[3.0, 4.0], &[5.0, 6.0], &mut out);
        assert_eq!(out, vec![28.5, 32.0]);
    }
}
