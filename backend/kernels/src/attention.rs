//! Scaled dot-product attention row by row, forward and backward, as FlashAttention computes it:
//! the forward pass keeps each row's log-sum-exp beside the output, and the backward pass
//! recomputes the probabilities from it, so no `(queries, keys)` matrix outlives one row.
//! Dropout masks come from a counter-based hash of the position (the same draw in both passes,
//! nothing stored). Grouped-query attention reads each key/value head for its group of query heads.

use ndarray::LinalgScalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};
use num_traits::Float;
use rayon::prelude::*;

/// Sizes of one call: `q` is `(batch, heads, queries, head_dim)`, `k` and `v` are `(batch,
/// kv_heads, keys, head_dim)`, all row-major; query head `h` reads kv head `h / (heads / kv_heads)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub head_dim: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Whether the sizes fit together (`heads` a multiple of `kv_heads`, `keys ≥ queries`).
    pub fn valid(&self) -> bool {
        self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads) && self.keys >= self.queries
    }
}

/// Which keys a query may see. The query at row `i` sits at position `keys - queries + i` (the
/// positions before it are a KV cache's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Visibility<'a> {
    /// A query sees no later position.
    pub causal: bool,
    /// A query sees at most the last `window` positions, itself included (with `causal`).
    pub window: Option<usize>,
    /// `(batch, keys)` row-major: false for a padding key, which no query sees.
    pub key_visible: Option<&'a [bool]>,
}

impl Visibility<'_> {
    /// Whether the query at absolute `position` of batch row `row` sees key `key` (of `keys`).
    pub fn sees(&self, row: usize, keys: usize, position: usize, key: usize) -> bool {
        if self.causal && (key > position || self.window.is_some_and(|w| position >= key + w)) {
            return false;
        }
        self.key_visible.is_none_or(|visible| visible[row * keys + key])
    }
}

/// Attention dropout: each probability is dropped with `probability`, by a hash of `seed` and its
/// position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub probability: f32,
    pub seed: u64,
}

impl Dropout {
    /// Whether the probability at `(head, query, key)` (head counted over batch × heads) is kept.
    pub fn keeps(&self, head: usize, queries: usize, keys: usize, query: usize, key: usize) -> bool {
        self.keeps_index(((head * queries + query) * keys + key) as u64)
    }

    /// Whether the element at flat position `index` is kept.
    #[inline]
    pub fn keeps_index(&self, index: u64) -> bool {
        self.uniform(index) >= self.probability
    }

    /// The uniform draw in `[0, 1)` for position `index`: 24 bits of two rounds of a 32-bit
    /// integer hash (Wellons' lowbias32) keyed by the seed, the low half of the position in the
    /// first round and the high half in the second. 32-bit lanes, so a row of draws vectorises.
    #[inline]
    pub fn uniform(&self, index: u64) -> f32 {
        #[inline(always)]
        fn mix(mut x: u32) -> u32 {
            x ^= x >> 16;
            x = x.wrapping_mul(0x7feb_352d);
            x ^= x >> 15;
            x = x.wrapping_mul(0x846c_a68b);
            x ^ (x >> 16)
        }
        let first = mix((index as u32) ^ (self.seed as u32));
        let second = mix(first ^ ((index >> 32) as u32) ^ ((self.seed >> 32) as u32).wrapping_mul(0x9E37_79B9));
        ((second >> 8) as f32) * (1.0 / (1u32 << 24) as f32)
    }

    /// Applies the mask to the consecutive positions `first..first + values.len()`: a kept value
    /// is scaled by `1 / (1 - p)`, a dropped one becomes zero.
    pub fn apply<T: Float>(&self, first: u64, values: &mut [T]) {
        let scale = T::from(self.scale()).unwrap_or_else(T::one);
        for (n, v) in values.iter_mut().enumerate() {
            let keep = self.uniform(first + n as u64) >= self.probability;
            *v = if keep { *v * scale } else { T::zero() };
        }
    }

    /// What a kept probability is multiplied by: `1 / (1 - p)`.
    pub fn scale(&self) -> f64 {
        1.0 / (1.0 - f64::from(self.probability))
    }
}

/// One attention call.
#[derive(Debug, Clone, Copy)]
pub struct Attention<'a> {
    pub dims: Dims,
    pub scale: f64,
    pub visibility: Visibility<'a>,
    pub dropout: Option<Dropout>,
}

/// Up to this many queries per head, the forward pass reads K and V row by row instead of through a
/// GEMM (whose packing copies all of K and V on every call: a quarter of a batched decoding step).
const DIRECT_QUERIES: usize = 4;

/// The elements of an array this module made (standard layout).
fn contiguous<T>(array: &mut Array2<T>) -> &mut [T] {
    array.as_slice_mut().unwrap_or_else(|| unreachable!("arrays made here are contiguous"))
}

/// `Σ a·b` over 16 lanes (the compiler vectorises the lanes; a plain fold would not reassociate).
fn dot<T: Float>(a: impl IntoIterator<Item = T>, b: impl IntoIterator<Item = T>) -> T {
    let mut lanes = [T::zero(); 16];
    for (n, (x, y)) in a.into_iter().zip(b).enumerate() {
        lanes[n % 16] = lanes[n % 16] + x * y;
    }
    lanes.iter().fold(T::zero(), |s, &x| s + x)
}

/// `Σ a·b` of two equal-length slices, over 8 accumulators (which the compiler keeps in vector
/// registers).
fn dot_slices<T: Float>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = a_chunks.remainder().iter().zip(b_chunks.remainder()).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] = lanes[lane] + x[lane] * y[lane];
        }
    }
    lanes.iter().fold(tail, |s, &x| s + x)
}

fn cast<T: Float>(value: f64) -> T {
    T::from(value).unwrap_or_else(T::one)
}

/// A row-major `rows × cols` view of `data`, each row `stride` elements after the previous.
fn view<T>(data: &[T], rows: usize, cols: usize, stride: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols).strides((stride, 1)), data).unwrap_or_else(|e| panic!("attention: {e}"))
}

fn view_mut<T>(data: &mut [T], rows: usize, cols: usize, stride: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols).strides((stride, 1)), data).unwrap_or_else(|e| panic!("attention: {e}"))
}

/// The element types the kernels run on.
pub trait Scalar: Float + LinalgScalar + Send + Sync {}
impl Scalar for f32 {}
impl Scalar for f64 {}

impl Attention<'_> {
    /// `scores` (`queries × keys`) ← the probabilities of flat head `head`'s queries, from
    /// `q kᵀ · scale` and the mask: the softmax where `lse` is `None` (and each row's log-sum-exp
    /// written to `lse_out`), else `exp(s − lse)` with the forward pass's log-sum-exp. A query that
    /// sees no key gets a row of zeros (log-sum-exp `+inf`).
    fn probabilities<T: Scalar>(
        &self,
        head: usize,
        q: ArrayView2<'_, T>,
        k: ArrayView2<'_, T>,
        scores: &mut Array2<T>,
        mut lse: impl FnMut(usize, Option<T>) -> T,
    ) {
        let Dims { heads, queries, keys, .. } = self.dims;
        if queries <= DIRECT_QUERIES
            && let (Some(q), Some(k)) = (q.as_slice(), k.as_slice())
        {
            // A decoding step's query or few: a GEMM would copy all of K into panels first.
            let scale = cast::<T>(self.scale);
            let d = self.dims.head_dim;
            let scores = contiguous(scores);
            for (query, row) in q.chunks_exact(d).zip(scores.chunks_exact_mut(keys)) {
                for (score, key) in row.iter_mut().zip(k.chunks_exact(d)) {
                    *score = scale * dot_slices(query, key);
                }
            }
        } else {
            general_mat_mul(cast::<T>(self.scale), &q, &k.t(), T::zero(), scores);
        }
        let (row, offset) = (head / heads, keys - queries);
        for (i, mut scores) in scores.rows_mut().into_iter().enumerate() {
            let mut max = T::neg_infinity();
            for (j, s) in scores.iter_mut().enumerate() {
                if self.visibility.sees(row, keys, offset + i, j) {
                    max = max.max(*s);
                } else {
                    *s = T::neg_infinity();
                }
            }
            if max == T::neg_infinity() {
                scores.fill(T::zero());
                lse(i, Some(T::infinity()));
                continue;
            }
            match lse(i, None) {
                known if known.is_finite() => scores.mapv_inplace(|s| (s - known).exp()),
                _ => {
                    let mut sum = T::zero();
                    scores.mapv_inplace(|s| {
                        let e = (s - max).exp();
                        sum = sum + e;
                        e
                    });
                    let inverse = T::one() / sum;
                    scores.mapv_inplace(|p| p * inverse);
                    lse(i, Some(max + sum.ln()));
                }
            }
        }
    }

    /// `(batch, heads, queries, head_dim + 1)`: each query's output and, in the last column, its
    /// log-sum-exp (`+inf` for a query that sees no key; its output is zeros).
    pub fn forward<T: Scalar>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        self.forward_blocked(q, k, v, self.dims.keys * self.dims.head_dim)
    }

    /// [`Attention::forward`] with each (batch, kv head)'s keys and values starting `kv_block`
    /// elements after the previous one's (at least `keys × head_dim`): the first positions of a
    /// longer KV cache, read where they lie.
    pub fn forward_blocked<T: Scalar>(&self, q: &[T], k: &[T], v: &[T], kv_block: usize) -> Vec<T> {
        let Dims { batch, heads, kv_heads, queries, keys, head_dim: d } = self.dims;
        assert!(kv_block >= keys * d, "attention: key blocks of {kv_block} elements hold no {keys} keys");
        let width = d + 1;
        let mut out = vec![T::zero(); batch * heads * queries * width];
        out.par_chunks_mut(queries * width).enumerate().for_each(|(head, out)| {
            let kv = (head / heads) * kv_heads + (head % heads) / self.dims.group();
            let k = view(&k[kv * kv_block..kv * kv_block + keys * d], keys, d, d);
            let v = view(&v[kv * kv_block..kv * kv_block + keys * d], keys, d, d);
            let q = view(&q[head * queries * d..(head + 1) * queries * d], queries, d, d);
            let mut probs = Array2::zeros((queries, keys));
            let mut lse = vec![T::zero(); queries];
            self.probabilities(head, q, k, &mut probs, |i, value| match value {
                Some(value) => {
                    lse[i] = value;
                    value
                }
                None => T::nan(),
            });
            if let Some(draw) = self.dropout {
                let first = (head * queries * keys) as u64;
                draw.apply(first, contiguous(&mut probs));
            }
            if queries <= DIRECT_QUERIES
                && let Some(v) = v.as_slice()
            {
                for (row, probs) in out.chunks_mut(width).zip(contiguous(&mut probs).chunks_exact(keys)) {
                    let row = &mut row[..d];
                    row.fill(T::zero());
                    for (&p, value) in probs.iter().zip(v.chunks_exact(d)) {
                        if p != T::zero() {
                            for (o, &x) in row.iter_mut().zip(value) {
                                *o = *o + p * x;
                            }
                        }
                    }
                }
            } else {
                general_mat_mul(T::one(), &probs, &v, T::zero(), &mut view_mut(out, queries, d, width));
            }
            for (row, lse) in out.chunks_mut(width).zip(lse) {
                row[d] = lse;
            }
        });
        out
    }

    /// Gradients `(dq, dk, dv)` from the inputs, the forward pass's output `res` (with its
    /// log-sum-exp column) and the output's gradient `grad` (same shape; its last column unused).
    pub fn backward<T: Scalar>(
        &self,
        (q, k, v): (&[T], &[T], &[T]),
        res: &[T],
        grad: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let Dims { queries, keys, head_dim: d, .. } = self.dims;
        let (width, group) = (d + 1, self.dims.group());
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        let scale = cast::<T>(self.scale);
        // One task per kv head: it owns that head's dk and dv and its query heads' dq.
        dq.par_chunks_mut(group * queries * d)
            .zip(dk.par_chunks_mut(keys * d).zip(dv.par_chunks_mut(keys * d)))
            .enumerate()
            .for_each(|(kv, (dq, (dk, dv)))| {
                let k = view(&k[kv * keys * d..(kv + 1) * keys * d], keys, d, d);
                let v = view(&v[kv * keys * d..(kv + 1) * keys * d], keys, d, d);
                let (mut dk, mut dv) = (view_mut(dk, keys, d, d), view_mut(dv, keys, d, d));
                let mut probs = Array2::zeros((queries, keys));
                let mut other = Array2::zeros((queries, keys));
                let mut mask = Array2::zeros(if self.dropout.is_some() { (queries, keys) } else { (0, 0) });
                for (r, dq) in dq.chunks_mut(queries * d).enumerate() {
                    let head = kv * group + r;
                    let rows = head * queries * width..(head + 1) * queries * width;
                    let q = view(&q[head * queries * d..(head + 1) * queries * d], queries, d, d);
                    let out = view(&res[rows.clone()], queries, d, width);
                    let grad = view(&grad[rows.clone()], queries, d, width);
                    let lse = view(&res[rows.start + d..rows.end], queries, 1, width);
                    self.probabilities(head, q, k, &mut probs, |i, _| lse[[i, 0]]);
                    // The dropout mask Z (1 / (1 - p) where kept, 0 where dropped), drawn once for both uses.
                    if let Some(draw) = self.dropout {
                        mask.fill(T::one());
                        draw.apply((head * queries * keys) as u64, contiguous(&mut mask));
                    }
                    // P' = P ∘ Z into `other`; dV += P'ᵀ dO.
                    other.zip_mut_with(&probs, |o, &p| *o = p);
                    if self.dropout.is_some() {
                        other.zip_mut_with(&mask, |o, &z| *o = *o * z);
                    }
                    general_mat_mul(T::one(), &other.t(), &grad, T::one(), &mut dv);
                    // dP' = dO vᵀ; dS = P ∘ (Z ∘ dP' − Σ_j P'_ij dP'_ij) · scale, that sum being dO_i · O_i.
                    general_mat_mul(T::one(), &grad, &v.t(), T::zero(), &mut other);
                    if self.dropout.is_some() {
                        other.zip_mut_with(&mask, |o, &z| *o = *o * z);
                    }
                    for (i, (mut p_row, d_row)) in probs.rows_mut().into_iter().zip(other.rows()).enumerate() {
                        let row_dot = dot(grad.row(i).iter().copied(), out.row(i).iter().copied());
                        p_row.zip_mut_with(&d_row, |p, &dp| *p = *p * (dp - row_dot) * scale);
                    }
                    general_mat_mul(T::one(), &probs, &k, T::zero(), &mut view_mut(dq, queries, d, d));
                    general_mat_mul(T::one(), &probs.t(), &q, T::one(), &mut dk);
                }
            });
        (dq, dk, dv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_window_hides_keys_older_than_the_window() {
        let mask = Visibility { causal: true, window: Some(2), key_visible: None };
        // Two queries after three cached positions: position 3 sees 2..=3, position 4 sees 3..=4.
        let visible: Vec<Vec<bool>> = (3..5).map(|p| (0..5).map(|j| mask.sees(0, 5, p, j)).collect()).collect();
        assert_eq!(visible, vec![vec![false, false, true, true, false], vec![false, false, false, true, true]]);
        let padded = [true, false, true];
        let mask = Visibility { causal: false, window: None, key_visible: Some(&padded) };
        assert_eq!((0..3).map(|j| mask.sees(0, 3, 0, j)).collect::<Vec<_>>(), padded);
    }

    #[test]
    fn dropout_keeps_the_expected_fraction() {
        let draw = Dropout { probability: 0.1, seed: 3 };
        let kept = (0..200_000).filter(|&j| draw.keeps(1, 2, 100_000, 1, j % 100_000)).count();
        let fraction = kept as f64 / 200_000.0;
        assert!((fraction - 0.9).abs() < 0.005, "kept {fraction}");
        let other = Dropout { probability: 0.1, seed: 4 };
        let same = (0..10_000).filter(|&j| draw.keeps(0, 1, 10_000, 0, j) == other.keeps(0, 1, 10_000, 0, j)).count();
        assert!(same < 9_000, "another seed draws another mask ({same} of 10000 equal)");
    }

    #[test]
    fn one_key_gives_its_value_and_a_query_that_sees_none_gives_zeros() {
        // Batch row 0 sees its one key; row 1's key is padding.
        let dims = Dims { batch: 2, heads: 1, kv_heads: 1, queries: 1, keys: 1, head_dim: 2 };
        let visible = [true, false];
        let attention = Attention {
            dims,
            scale: 1.0,
            visibility: Visibility { causal: false, window: None, key_visible: Some(&visible) },
            dropout: None,
        };
        let out = attention.forward(&[1.0f64, 2.0, 3.0, 4.0], &[0.5, 0.5, 1.0, 1.0], &[7.0, 8.0, 9.0, 10.0]);
        // Row 0: softmax of one score is 1, so the output is v and the log-sum-exp the score (1.5).
        assert_eq!(out, vec![7.0, 8.0, 1.5, 0.0, 0.0, f64::INFINITY]);
    }

    /// Keys and values read in place from the first positions of longer blocks (a KV cache with
    /// spare columns, filled with what must not be read) give what the same keys packed give.
    #[test]
    fn keys_read_from_longer_blocks_give_what_packed_keys_give() {
        let dims = Dims { batch: 2, heads: 4, kv_heads: 2, queries: 1, keys: 3, head_dim: 2 };
        let attention = Attention {
            dims,
            scale: 0.7,
            visibility: Visibility { causal: true, ..Visibility::default() },
            dropout: None,
        };
        let value = |i: usize| ((i * 7 % 11) as f64 - 5.0) / 4.0;
        let q: Vec<f64> = (0..2 * 4 * 2).map(value).collect();
        let (packed_k, packed_v): (Vec<f64>, Vec<f64>) =
            (0..2 * 2 * 3 * 2).map(|i| (value(i + 3), value(i + 5))).unzip();
        // Blocks of 5 positions, the last 2 of each holding garbage.
        let spread = |packed: &[f64]| -> Vec<f64> {
            packed.chunks(3 * 2).flat_map(|block| block.iter().copied().chain([1e6; 4])).collect()
        };
        let packed = attention.forward(&q, &packed_k, &packed_v);
        assert_eq!(attention.forward_blocked(&q, &spread(&packed_k), &spread(&packed_v), 5 * 2), packed);
    }
}
