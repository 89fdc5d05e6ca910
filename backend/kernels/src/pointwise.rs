//! Element-wise and row-wise kernels with their backward passes: hashed dropout, exact GELU, and
//! the input gradients of softmax, layer norm and RMS norm. Each backward recomputes what it
//! needs (the dropout mask, the normalisation statistics) from the forward pass's input or output
//! in one pass over a row, where the composed version takes a dozen passes and as many buffers.

use rayon::prelude::*;

use crate::attention::{Dropout, Scalar};

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// Inverted dropout of `x` with the mask drawn by `draw` from each element's flat index. Dropout is
/// linear with a mask that the index fixes, so the same call on the output's gradient is the
/// backward pass.
pub fn dropout<T: Scalar>(x: &[T], draw: Dropout) -> Vec<T> {
    let mut out = x.to_vec();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, out)| draw.apply((chunk * CHUNK) as u64, out));
    out
}

/// erf(x) for f32 arithmetic: Abramowitz–Stegun 7.1.26 (absolute error below 1.5e-7, the size of
/// f32 rounding). `gaussian` is `exp(−x²)`, which the caller may already have.
#[inline]
fn erf_with(x: f32, gaussian: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * gaussian).copysign(x)
}

/// erf(x) in f32 (see `erf_with`).
#[inline]
pub fn erf(x: f32) -> f32 {
    erf_with(x, (-x * x).exp())
}

/// The gradient of exact GELU, `x · Φ(x)`: `grad · (Φ(x) + x · φ(x))`. One exponential per element
/// serves both erf and the density, as `exp(−(x/√2)²) = exp(−x²/2)`.
pub fn gelu_erf_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let density_scale = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK))).for_each(|(out, (x, grad))| {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(grad) {
            let gaussian = (-0.5 * x * x).exp();
            let cdf = 0.5 * (1.0 + erf_with(x * std::f32::consts::FRAC_1_SQRT_2, gaussian));
            *o = g * (cdf + x * density_scale * gaussian);
        }
    });
    out
}

/// The gradient of a softmax over rows of `width` from its output: `y ⊙ (g − Σ g ⊙ y)`.
pub fn softmax_backward<T: Scalar>(probs: &[T], grad: &[T], width: usize) -> Vec<T> {
    let width = width.max(1);
    let mut out = vec![T::zero(); probs.len()];
    out.par_chunks_mut(width).zip(probs.par_chunks(width).zip(grad.par_chunks(width))).for_each(|(out, (y, g))| {
        let dot = y.iter().zip(g).fold(T::zero(), |s, (&y, &g)| s + y * g);
        for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
            *o = y * (g - dot);
        }
    });
    out
}

/// A normalisation over rows of `weight.len()` elements: layer norm (`centred`) or RMS norm.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    pub eps: f64,
    pub centred: bool,
}

impl Norm {
    /// The gradient of the input of `normalise(x) ⊙ weight (+ bias)` from the output's gradient:
    /// with `x̂` the normalised row, `ĝ = g ⊙ weight` and `rstd = 1/√(var + eps)`,
    /// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`, without the `mean(ĝ)` term for RMS norm.
    pub fn input_gradient<T: Scalar>(&self, x: &[T], weight: &[T], grad: &[T]) -> Vec<T> {
        let width = weight.len().max(1);
        let n = T::from(width).unwrap_or_else(T::one);
        let eps = T::from(self.eps).unwrap_or_else(T::zero);
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(width).zip(x.par_chunks(width).zip(grad.par_chunks(width))).for_each(|(out, (x, g))| {
            let mean = if self.centred { x.iter().fold(T::zero(), |s, &v| s + v) / n } else { T::zero() };
            let variance = x.iter().fold(T::zero(), |s, &v| s + (v - mean) * (v - mean)) / n;
            let rstd = (variance + eps).sqrt().recip();
            let (mut sum_g, mut sum_gx) = (T::zero(), T::zero());
            for ((&v, &g), &w) in x.iter().zip(g).zip(weight) {
                let scaled = g * w;
                sum_g = sum_g + scaled;
                sum_gx = sum_gx + scaled * (v - mean) * rstd;
            }
            let mean_g = if self.centred { sum_g / n } else { T::zero() };
            let mean_gx = sum_gx / n;
            for (((o, &v), &g), &w) in out.iter_mut().zip(x).zip(g).zip(weight) {
                *o = rstd * (g * w - mean_g - (v - mean) * rstd * mean_gx);
            }
        });
        out
    }
}

/// Rotary position embedding in the "rotate half" form (Hugging Face's Llama): for each row of
/// `width` (a head's states at one position), `y = x ⊙ cos + rotate_half(x) ⊙ sin` with
/// `rotate_half([a, b]) = [-b, a]`. `cos`/`sin` hold one row per position (`positions` rows,
/// `width` wide); the rows of `x` are `(groups, positions)` in order. The backward pass is the
/// transposed map (`inverse`), the rotation by the opposite angle.
pub fn rotate_half<T: Scalar>(x: &[T], cos: &[T], sin: &[T], width: usize, inverse: bool) -> Vec<T> {
    let width = width.max(1);
    let half = width / 2;
    let positions = cos.len() / width;
    assert!(positions > 0 && x.len().is_multiple_of(positions * width), "rope: tables do not cover the input");
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(positions * width).zip(x.par_chunks(positions * width)).for_each(|(out, x)| {
        for (((out, x), cos), sin) in
            out.chunks_mut(width).zip(x.chunks(width)).zip(cos.chunks(width)).zip(sin.chunks(width))
        {
            for i in 0..half {
                let (low, high) = (x[i], x[i + half]);
                if inverse {
                    out[i] = low * cos[i] + high * sin[i + half];
                    out[i + half] = high * cos[i + half] - low * sin[i];
                } else {
                    out[i] = low * cos[i] - high * sin[i];
                    out[i + half] = high * cos[i + half] + low * sin[i + half];
                }
            }
        }
    });
    out
}

/// SwiGLU, `silu(gate) ⊙ up`, elementwise.
pub fn swiglu<T: Scalar>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(out, (gate, up))| {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (T::one() + (-g).exp()) * u;
        }
    });
    out
}

/// Gradients `(d gate, d up)` of [`swiglu`] from the output's gradient, recomputing the sigmoid:
/// `d up = g ⊙ silu(gate)`, `d gate = g ⊙ up ⊙ σ(gate) (1 + gate (1 − σ(gate)))`.
pub fn swiglu_backward<T: Scalar>(gate: &[T], up: &[T], grad: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut d_gate, mut d_up) = (vec![T::zero(); gate.len()], vec![T::zero(); gate.len()]);
    d_gate.par_chunks_mut(CHUNK).zip(d_up.par_chunks_mut(CHUNK)).enumerate().for_each(|(chunk, (d_gate, d_up))| {
        let start = chunk * CHUNK;
        for (i, (dg, du)) in d_gate.iter_mut().zip(d_up.iter_mut()).enumerate() {
            let (g, u, grad) = (gate[start + i], up[start + i], grad[start + i]);
            let sigmoid = T::one() / (T::one() + (-g).exp());
            *du = grad * g * sigmoid;
            *dg = grad * u * sigmoid * (T::one() + g * (T::one() - sigmoid));
        }
    });
    (d_gate, d_up)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of `f` at `x` in direction of each coordinate, dotted with `grad`.
    fn numeric_gradient(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], grad: &[f64]) -> Vec<f64> {
        let h = 1e-6;
        (0..x.len())
            .map(|i| {
                let mut plus = x.to_vec();
                let mut minus = x.to_vec();
                plus[i] += h;
                minus[i] -= h;
                let (fp, fm) = (f(&plus), f(&minus));
                fp.iter().zip(&fm).zip(grad).map(|((p, m), g)| (p - m) / (2.0 * h) * g).sum()
            })
            .collect()
    }

    fn values(count: usize, seed: u64) -> Vec<f64> {
        let draw = Dropout { probability: 0.0, seed };
        (0..count).map(|i| (draw.uniform(i as u64) as f64 - 0.5) * 3.0).collect()
    }

    fn layer_norm(x: &[f64], weight: &[f64], centred: bool) -> Vec<f64> {
        x.chunks(weight.len())
            .flat_map(|row| {
                let n = row.len() as f64;
                let mean = if centred { row.iter().sum::<f64>() / n } else { 0.0 };
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                let rstd = 1.0 / (var + 1e-5).sqrt();
                row.iter().zip(weight).map(move |(v, w)| (v - mean) * rstd * w).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn norm_input_gradients_match_finite_differences() {
        let (x, weight, grad) = (values(3 * 7, 1), values(7, 2), values(3 * 7, 3));
        for centred in [true, false] {
            let fused = Norm { eps: 1e-5, centred }.input_gradient(&x, &weight, &grad);
            let numeric = numeric_gradient(|x| layer_norm(x, &weight, centred), &x, &grad);
            for (a, b) in fused.iter().zip(&numeric) {
                assert!((a - b).abs() < 1e-6, "centred {centred}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn softmax_backward_matches_finite_differences() {
        let (x, grad) = (values(2 * 5, 4), values(2 * 5, 5));
        let softmax = |x: &[f64]| -> Vec<f64> {
            x.chunks(5)
                .flat_map(|row| {
                    let sum: f64 = row.iter().map(|v| v.exp()).sum();
                    row.iter().map(move |v| v.exp() / sum).collect::<Vec<_>>()
                })
                .collect()
        };
        let fused = softmax_backward(&softmax(&x), &grad, 5);
        let numeric = numeric_gradient(softmax, &x, &grad);
        for (a, b) in fused.iter().zip(&numeric) {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn gelu_backward_matches_finite_differences_of_the_forward() {
        let xs: Vec<f32> = (-600..=600).map(|i| i as f32 / 100.0).collect();
        let ones = vec![1.0f32; xs.len()];
        let fused = gelu_erf_backward(&xs, &ones);
        for (&x, &d) in xs.iter().zip(&fused) {
            // Φ via the f64 forward of the same formula (erf from its series is exact enough here).
            let gelu = |x: f64| 0.5 * x * (1.0 + erf(x as f32 / std::f32::consts::SQRT_2) as f64);
            let numeric = (gelu(x as f64 + 1e-2) - gelu(x as f64 - 1e-2)) / 2e-2;
            assert!((d as f64 - numeric).abs() < 2e-4, "x {x}: {d} vs {numeric}");
        }
        assert!((erf(0.5) - 0.520_499_9).abs() < 3e-7 && (erf(-2.0) + 0.995_322_3).abs() < 3e-7);
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_scales_them_and_repeats_for_a_seed() {
        let x = vec![1.0f64; 100_000];
        let draw = Dropout { probability: 0.25, seed: 7 };
        let out = dropout(&x, draw);
        let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / x.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(out.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-12));
        assert_eq!(out, dropout(&x, draw));
        assert_ne!(out, dropout(&x, Dropout { seed: 8, ..draw }));
    }

    #[test]
    fn rotate_half_is_the_rotation_worked_by_hand_and_its_inverse_is_its_gradient() {
        // One position, width 4: x = [1, 2, 3, 4], pairs (1, 3) and (2, 4) rotated by the angles
        // of cos = [0, 1, 0, 1] and sin = [1, 0, 1, 0]: the first pair by 90°, the second by 0°.
        let (cos, sin) = ([0.0f64, 1.0, 0.0, 1.0], [1.0f64, 0.0, 1.0, 0.0]);
        assert_eq!(rotate_half(&[1.0, 2.0, 3.0, 4.0], &cos, &sin, 4, false), vec![-3.0, 2.0, 1.0, 4.0]);
        // Two groups (heads) of three positions, width 6, tables whose halves differ.
        let (x, cos, sin, grad) = (values(2 * 3 * 6, 6), values(3 * 6, 7), values(3 * 6, 8), values(2 * 3 * 6, 9));
        let fused = rotate_half(&grad, &cos, &sin, 6, true);
        let numeric = numeric_gradient(|x| rotate_half(x, &cos, &sin, 6, false), &x, &grad);
        for (a, b) in fused.iter().zip(&numeric) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let (gate, up, grad) = (values(40_000, 10), values(40_000, 11), values(40_000, 12));
        let silu = |g: f64| g / (1.0 + (-g).exp());
        assert!(
            swiglu(&gate, &up).iter().zip(gate.iter().zip(&up)).all(|(o, (g, u))| (o - silu(*g) * u).abs() < 1e-12)
        );
        let (d_gate, d_up) = swiglu_backward(&gate, &up, &grad);
        // Over a few coordinates (spread across the parallel chunks), each by central differences.
        for i in [0, 1, 17_000, 39_999] {
            let h = 1e-6;
            let numeric_gate = (silu(gate[i] + h) - silu(gate[i] - h)) / (2.0 * h) * up[i] * grad[i];
            assert!((d_gate[i] - numeric_gate).abs() < 1e-7, "d gate {i}: {} vs {numeric_gate}", d_gate[i]);
            assert!((d_up[i] - silu(gate[i]) * grad[i]).abs() < 1e-12, "d up {i}");
        }
    }
}
