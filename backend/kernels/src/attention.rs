//! Scaled dot-product attention row by row, forward and backward, as FlashAttention computes it:
//! the forward pass keeps each row's log-sum-exp beside the output, and the backward pass
//! recomputes the probabilities from it, so no `(queries, keys)` matrix outlives one row.
//! Dropout masks come from a counter-based hash of the position (the same draw in both passes,
//! nothing stored). Grouped-query attention reads each key/value head for its group of query heads.

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
        let index = ((head * queries + query) * keys + key) as u64;
        // splitmix64 of the seed and the position.
        let mut z = self.seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= self.probability
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

/// `Σ a·b` over 16 lanes (the compiler vectorises the lanes; a plain fold would not reassociate).
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail = a_chunks.remainder().iter().zip(b_chunks.remainder()).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            lanes[l] = lanes[l] + x[l] * y[l];
        }
    }
    lanes.iter().fold(tail, |s, &x| s + x)
}

/// `y += a · x`.
fn axpy<T: Float>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + a * x;
    }
}

fn cast<T: Float>(value: f64) -> T {
    T::from(value).unwrap_or_else(T::one)
}

impl Attention<'_> {
    /// The scores of query `i` of flat head `head` against every key it sees (`-inf` elsewhere),
    /// into `scores`; returns their maximum (`-inf` when it sees none).
    fn scores<T: Float>(&self, head: usize, i: usize, q_row: &[T], k: &[T], scores: &mut [T]) -> T {
        let Dims { heads, queries, keys, head_dim: d, .. } = self.dims;
        let (row, position, scale) = (head / heads, keys - queries + i, cast::<T>(self.scale));
        let mut max = T::neg_infinity();
        for (j, score) in scores.iter_mut().enumerate() {
            *score = if self.visibility.sees(row, keys, position, j) {
                let s = dot(q_row, &k[j * d..(j + 1) * d]) * scale;
                max = max.max(s);
                s
            } else {
                T::neg_infinity()
            };
        }
        max
    }

    /// `(batch, heads, queries, head_dim + 1)`: each query's output and, in the last column, its
    /// log-sum-exp (`+inf` for a query that sees no key; its output is zeros).
    pub fn forward<T: Float + Send + Sync>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let Dims { batch, heads, kv_heads, queries, keys, head_dim: d } = self.dims;
        let width = d + 1;
        let mut out = vec![T::zero(); batch * heads * queries * width];
        let keep_scale = cast::<T>(self.dropout.map_or(1.0, |p| p.scale()));
        out.par_chunks_mut(queries * width).enumerate().for_each(|(head, out)| {
            let kv = (head / heads) * kv_heads + (head % heads) / self.dims.group();
            let (k, v) = (&k[kv * keys * d..(kv + 1) * keys * d], &v[kv * keys * d..(kv + 1) * keys * d]);
            let q = &q[head * queries * d..(head + 1) * queries * d];
            let mut scores = vec![T::zero(); keys];
            for (i, out_row) in out.chunks_mut(width).enumerate() {
                let max = self.scores(head, i, &q[i * d..(i + 1) * d], k, &mut scores);
                if max == T::neg_infinity() {
                    out_row[d] = T::infinity();
                    continue;
                }
                let mut sum = T::zero();
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum = sum + *s;
                }
                let inverse = T::one() / sum;
                let (acc, lse) = out_row.split_at_mut(d);
                for (j, &p) in scores.iter().enumerate() {
                    if p == T::zero() || self.dropout.is_some_and(|draw| !draw.keeps(head, queries, keys, i, j)) {
                        continue;
                    }
                    axpy(acc, p * inverse * keep_scale, &v[j * d..(j + 1) * d]);
                }
                lse[0] = max + sum.ln();
            }
        });
        out
    }

    /// Gradients `(dq, dk, dv)` from the inputs, the forward pass's output `res` (with its
    /// log-sum-exp column) and the output's gradient `grad` (same shape; its last column unused).
    pub fn backward<T: Float + Send + Sync>(
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
        let keep_scale = cast::<T>(self.dropout.map_or(1.0, |p| p.scale()));
        // One task per kv head: it owns that head's dk and dv and its query heads' dq.
        dq.par_chunks_mut(group * queries * d)
            .zip(dk.par_chunks_mut(keys * d).zip(dv.par_chunks_mut(keys * d)))
            .enumerate()
            .for_each(|(kv, (dq, (dk, dv)))| {
                let (k, v) = (&k[kv * keys * d..(kv + 1) * keys * d], &v[kv * keys * d..(kv + 1) * keys * d]);
                let mut scores = vec![T::zero(); keys];
                for (r, dq) in dq.chunks_mut(queries * d).enumerate() {
                    let head = kv * group + r;
                    for i in 0..queries {
                        let at = head * queries + i;
                        let (q_row, out_row) = (&q[at * d..(at + 1) * d], &res[at * width..(at + 1) * width]);
                        let lse = out_row[d];
                        if lse == T::infinity() {
                            continue;
                        }
                        let grad_row = &grad[at * width..at * width + d];
                        self.scores(head, i, q_row, k, &mut scores);
                        // Σ_j P'_ij dP'_ij = dO_i · O_i, P' the probabilities after dropout.
                        let row_dot = dot(grad_row, &out_row[..d]);
                        let dq_row = &mut dq[i * d..(i + 1) * d];
                        for (j, &s) in scores.iter().enumerate() {
                            if s == T::neg_infinity() {
                                continue;
                            }
                            let p = (s - lse).exp();
                            let kept = self.dropout.is_none_or(|draw| draw.keeps(head, queries, keys, i, j));
                            let d_prob = if kept {
                                axpy(&mut dv[j * d..(j + 1) * d], p * keep_scale, grad_row);
                                dot(grad_row, &v[j * d..(j + 1) * d]) * keep_scale
                            } else {
                                T::zero()
                            };
                            let d_score = p * (d_prob - row_dot) * scale;
                            axpy(dq_row, d_score, &k[j * d..(j + 1) * d]);
                            axpy(&mut dk[j * d..(j + 1) * d], d_score, q_row);
                        }
                    }
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
}
