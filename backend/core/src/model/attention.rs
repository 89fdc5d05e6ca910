//! Scaled dot-product attention: `softmax(q kᵀ · scale + mask) · v` with attention dropout. On the
//! CPU (f32, f64) a fused op, forward and backward, that never materialises the `(batch, heads,
//! queries, keys)` scores, probabilities or dropout mask (the loops are `attune_kernels::attention`;
//! this file is their candle op). Elsewhere, candle's ops composed with the same mask and the same
//! dropout masks, which is also what the tests compare the kernel with.

use attune_kernels::attention::{Attention, Dims, Dropout, Scalar, Visibility};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

use super::layers::{Dropout as DropoutLayer, Mode, softmax_last_dim};
use super::ops::{cpu_slice, host_vec};

/// Which keys a query may see. A query at row `i` of `q` sits at position `offset + i`, with
/// `offset = keys - queries` (the positions a KV cache holds before it).
#[derive(Debug, Clone, Default)]
pub struct AttentionMask {
    /// A query sees no later position.
    causal: bool,
    /// A query sees at most the last `window` positions, itself included (causal only).
    window: Option<usize>,
    /// `(batch, keys)` row-major: false for a padding key, which no query sees.
    key_visible: Option<Vec<bool>>,
    /// The composed ops' additive mask, built once for all the layers that share this mask.
    additive: std::sync::OnceLock<Option<Tensor>>,
}

impl AttentionMask {
    /// Bidirectional attention that hides padding keys (an encoder's).
    pub fn padding(key_visible: Option<Vec<bool>>) -> AttentionMask {
        AttentionMask { key_visible, ..AttentionMask::default() }
    }

    /// Causal attention, within `window` if any, that hides padding keys (a decoder's).
    pub fn causal(window: Option<usize>, key_visible: Option<Vec<bool>>) -> AttentionMask {
        AttentionMask { causal: true, window, key_visible, ..AttentionMask::default() }
    }

    /// Keys of `(batch, keys)` padding mask `padding` (1 for real tokens, 0 for padding).
    pub fn key_visible_from(padding: &Tensor) -> Result<Vec<bool>> {
        Ok(padding.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|x| x > 0.5).collect())
    }

    fn visibility(&self) -> Visibility<'_> {
        Visibility { causal: self.causal, window: self.window, key_visible: self.key_visible.as_deref() }
    }

    /// The additive mask `(batch or 1, 1, queries, keys)` of the composed ops: 0 where a query
    /// sees a key, -1e9 elsewhere; `None` when every query sees every key. Built on the first call
    /// and kept (every layer of a forward pass has the same shapes).
    fn additive(
        &self,
        batch: usize,
        queries: usize,
        keys: usize,
        device: &candle_core::Device,
    ) -> Result<Option<Tensor>> {
        if let Some(built) = self.additive.get() {
            return Ok(built.clone());
        }
        let (offset, visibility) = (keys - queries, self.visibility());
        let rows = if self.key_visible.is_some() { batch } else { 1 };
        let values: Vec<f32> = (0..rows)
            .flat_map(|b| {
                (0..queries).flat_map(move |i| {
                    (0..keys).map(move |j| if visibility.sees(b, keys, offset + i, j) { 0.0 } else { -1e9 })
                })
            })
            .collect();
        let built = if values.iter().all(|&x| x == 0.0) {
            None
        } else {
            Some(Tensor::from_vec(values, (rows, 1, queries, keys), device)?)
        };
        Ok(self.additive.get_or_init(|| built).clone())
    }
}

/// `softmax(q kᵀ · scale + mask) · v` with dropout `dropout` on the probabilities in training
/// `mode`. `q` is `(batch, heads, queries, head_dim)`; `k` and `v` are `(batch, kv_heads, keys,
/// head_dim)` with `heads` a multiple of `kv_heads` (query head `h` reads kv head `h / (heads /
/// kv_heads)`) and `keys ≥ queries`. Returns `(batch, heads, queries, head_dim)`.
///
/// A query that sees no key at all gets zeros (and passes no gradient).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &AttentionMask,
    dropout: f32,
    mode: Mode<'_>,
) -> Result<Tensor> {
    let (batch, heads, queries, head_dim) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    let dims = Dims { batch, heads, kv_heads, queries, keys, head_dim };
    if !dims.valid() || k.dims() != v.dims() || k.dim(0)? != batch || k.dim(3)? != head_dim {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} do not fit together", q.dims(), k.dims(), v.dims());
    }
    if let Some(visible) = &mask.key_visible
        && visible.len() != batch * keys
    {
        candle_core::bail!("attention: the padding mask covers {} keys, expected {}", visible.len(), batch * keys);
    }
    let fused = super::ops::cpu_float(q);
    if !fused {
        // The dropout layer draws its mask on the device (a mask built here would be uploaded per call).
        return composed(q, k, v, scale, mask, |probs| DropoutLayer::new(dropout).forward(&probs, mode));
    }
    if keys == 0 {
        return q.zeros_like();
    }
    let draw = match mode {
        Mode::Train(rng) if dropout > 0.0 => Some(Dropout { probability: dropout, seed: rng.next_seed() }),
        _ => None,
    };
    let op = FusedAttention { scale, mask: mask.clone(), dropout: draw };
    // Keys and values that are the first positions of a longer cache are read where they lie.
    let blocked = |t: &Tensor| if block_stride(t.layout()).is_some() { Ok(t.clone()) } else { t.contiguous() };
    q.contiguous()?.apply_op3(&blocked(k)?, &blocked(v)?, op)?.narrow(3, 0, head_dim)
}

/// Elements from each (batch, head) block of `layout` `(batch, heads, rows, dim)` to the next, when
/// every block's rows are contiguous and the blocks evenly spaced (a contiguous tensor, or the first
/// rows of a longer one's).
fn block_stride(layout: &Layout) -> Option<usize> {
    let (_, heads, rows, dim) = layout.shape().dims4().ok()?;
    let stride = layout.stride();
    (stride[3] == 1 && stride[2] == dim && stride[1] >= rows * dim && stride[0] == heads * stride[1])
        .then_some(stride[1])
}

/// The elements of a `(batch, heads, rows, dim)` tensor laid out in evenly spaced blocks
/// ([`block_stride`]), from its first block's start to its last one's end, and the spacing.
fn head_blocks<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [T], usize)> {
    let Some(block) = block_stride(layout) else { candle_core::bail!("attention: keys and values must be contiguous") };
    let (batch, heads, rows, dim) = layout.shape().dims4()?;
    let start = layout.start_offset();
    let len = if batch * heads == 0 { 0 } else { (batch * heads - 1) * block + rows * dim };
    Ok((&storage.as_slice::<T>()?[start..start + len], block))
}

/// The same attention from candle's ops (the mask materialised), with `dropout` applied to the
/// probabilities.
fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &AttentionMask,
    dropout: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (batch, heads, queries, _) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    let repeat = heads / kv_heads;
    let (k, v) = (repeat_kv(k, repeat)?, repeat_kv(v, repeat)?);
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(additive) = mask.additive(batch, queries, keys, q.device())? {
        scores = scores.broadcast_add(&additive.to_dtype(scores.dtype())?)?;
    }
    dropout(softmax_last_dim(&scores)?)?.matmul(&v)
}

/// `(batch, kv_heads, seq, d)` → `(batch, kv_heads * n, seq, d)`, each kv head repeated `n` times.
fn repeat_kv(xs: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(xs.clone());
    }
    let (batch, kv_heads, seq_len, head_dim) = xs.dims4()?;
    xs.unsqueeze(2)?.broadcast_as((batch, kv_heads, n, seq_len, head_dim))?.reshape((
        batch,
        kv_heads * n,
        seq_len,
        head_dim,
    ))
}

/// The CPU op. Its output is `(batch, heads, queries, head_dim + 1)`: each row's output and, in the
/// last column, its log-sum-exp (for the backward pass; [`attention`] narrows it away).
struct FusedAttention {
    scale: f64,
    mask: AttentionMask,
    dropout: Option<Dropout>,
}

impl FusedAttention {
    fn kernel(&self, q: &Shape, k: &Shape) -> Result<Attention<'_>> {
        let (batch, heads, queries, head_dim) = q.dims4()?;
        let (_, kv_heads, keys, _) = k.dims4()?;
        Ok(Attention {
            dims: Dims { batch, heads, kv_heads, queries, keys, head_dim },
            scale: self.scale,
            visibility: self.mask.visibility(),
            dropout: self.dropout,
        })
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let kernel = self.kernel(q_layout.shape(), k_layout.shape())?;
        fn run<T: Scalar + WithDType>(
            kernel: &Attention<'_>,
            [q, k, v]: [(&CpuStorage, &Layout); 3],
        ) -> Result<CpuStorage> {
            let q = cpu_slice::<T>(q.0, q.1, "attention")?;
            let ((k, k_block), (v, v_block)) = (head_blocks::<T>(k.0, k.1)?, head_blocks::<T>(v.0, v.1)?);
            if k_block != v_block {
                candle_core::bail!("attention: keys and values lie in blocks of {k_block} and {v_block} elements");
            }
            Ok(T::to_cpu_storage_owned(kernel.forward_blocked(q, k, v, k_block)))
        }
        let inputs = [(q, q_layout), (k, k_layout), (v, v_layout)];
        let out = match q.dtype() {
            DType::F32 => run::<f32>(&kernel, inputs)?,
            DType::F64 => run::<f64>(&kernel, inputs)?,
            other => candle_core::bail!("attention: unsupported dtype {other:?}"),
        };
        let Dims { batch, heads, queries, head_dim, .. } = kernel.dims;
        Ok((out, Shape::from((batch, heads, queries, head_dim + 1))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let kernel = self.kernel(q.shape(), k.shape())?;
        fn run<T: Scalar + WithDType>(
            kernel: &Attention<'_>,
            [q, k, v, res, grad]: [&Tensor; 5],
        ) -> Result<[Tensor; 3]> {
            let (dq, dk, dv) =
                kernel.backward::<T>((&host_vec(q)?, &host_vec(k)?, &host_vec(v)?), &host_vec(res)?, &host_vec(grad)?);
            Ok([Tensor::new(dq, q.device())?, Tensor::new(dk, q.device())?, Tensor::new(dv, q.device())?])
        }
        let [dq, dk, dv] = match q.dtype() {
            DType::F32 => run::<f32>(&kernel, [q, k, v, res, grad])?,
            DType::F64 => run::<f64>(&kernel, [q, k, v, res, grad])?,
            other => candle_core::bail!("attention: unsupported dtype {other:?}"),
        };
        Ok((Some(dq.reshape(q.shape())?), Some(dk.reshape(k.shape())?), Some(dv.reshape(v.shape())?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::model::layers::DropoutRng;
    use crate::model::test_util::max_abs_diff;

    /// The dropout mask the kernel applies, materialised `(batch, heads, queries, keys)`: `1 / (1 - p)`
    /// where kept, 0 where dropped.
    fn dropout_mask(draw: Dropout, dims: Dims, device: &candle_core::Device) -> Result<Tensor> {
        let Dims { batch, heads, queries, keys, .. } = dims;
        let scale = draw.scale();
        let values: Vec<f64> = (0..batch * heads)
            .flat_map(|h| {
                (0..queries).flat_map(move |i| {
                    (0..keys).map(move |j| if draw.keeps(h, queries, keys, i, j) { scale } else { 0.0 })
                })
            })
            .collect();
        Tensor::from_vec(values, (batch, heads, queries, keys), device)
    }

    fn random(shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.0f32, 1.0).expect("valid normal");
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| normal.sample(&mut rng)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)
    }

    /// A case: shapes and mask.
    struct Case {
        name: &'static str,
        batch: usize,
        heads: usize,
        kv_heads: usize,
        queries: usize,
        keys: usize,
        head_dim: usize,
        mask: AttentionMask,
    }

    fn cases() -> Vec<Case> {
        // Batch row 0 has its last 2 keys padded, row 1 none (BERT-style right padding).
        let padded = |keys: usize| Some((0..2 * keys).map(|i| i < keys - 2 || i >= keys).collect());
        vec![
            Case {
                name: "plain",
                batch: 2,
                heads: 3,
                kv_heads: 3,
                queries: 7,
                keys: 7,
                head_dim: 20,
                mask: AttentionMask::default(),
            },
            Case {
                name: "padding",
                batch: 2,
                heads: 2,
                kv_heads: 2,
                queries: 9,
                keys: 9,
                head_dim: 16,
                mask: AttentionMask { key_visible: padded(9), ..AttentionMask::default() },
            },
            Case {
                name: "causal, padding, grouped",
                batch: 2,
                heads: 4,
                kv_heads: 2,
                queries: 8,
                keys: 8,
                head_dim: 12,
                mask: AttentionMask { causal: true, key_visible: padded(8), ..AttentionMask::default() },
            },
            Case {
                name: "causal window",
                batch: 1,
                heads: 2,
                kv_heads: 1,
                queries: 10,
                keys: 10,
                head_dim: 8,
                mask: AttentionMask { causal: true, window: Some(3), ..AttentionMask::default() },
            },
            Case {
                name: "cached prefix",
                batch: 2,
                heads: 2,
                kv_heads: 2,
                queries: 3,
                keys: 8,
                head_dim: 17,
                mask: AttentionMask { causal: true, key_visible: padded(8), ..AttentionMask::default() },
            },
            // One query per row over cached keys with padding between (batched decoding): the
            // kernel reads K and V row by row below five queries.
            Case {
                name: "decoding step, grouped",
                batch: 2,
                heads: 4,
                kv_heads: 2,
                queries: 1,
                keys: 11,
                head_dim: 16,
                mask: AttentionMask { causal: true, key_visible: padded(11), ..AttentionMask::default() },
            },
        ]
    }

    /// Output and gradients of q, k, v through a random projection of the output.
    fn run(
        case: &Case,
        dtype: DType,
        f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let q = Var::from_tensor(&random(&[case.batch, case.heads, case.queries, case.head_dim], dtype, 1)?)?;
        let k = Var::from_tensor(&random(&[case.batch, case.kv_heads, case.keys, case.head_dim], dtype, 2)?)?;
        let v = Var::from_tensor(&random(&[case.batch, case.kv_heads, case.keys, case.head_dim], dtype, 3)?)?;
        let projection = random(&[case.batch, case.heads, case.queries, case.head_dim], dtype, 4)?;
        let out = f(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
        let grads = (&out * &projection)?.sum_all()?.backward()?;
        let grads = [&q, &k, &v].iter().map(|x| grads.get(x).expect("a gradient").clone()).collect();
        Ok((out, grads))
    }

    fn assert_close(case: &str, what: &str, a: &Tensor, b: &Tensor, tolerance: f32) {
        assert_eq!(a.dims(), b.dims(), "{case}: {what}");
        let diff = max_abs_diff(&a.to_dtype(DType::F32).unwrap(), &b.to_dtype(DType::F32).unwrap());
        assert!(diff <= tolerance, "{case}: {what} differs by {diff}");
    }

    #[test]
    fn fused_attention_matches_the_composed_ops_forward_and_backward() -> Result<()> {
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            for case in cases() {
                let scale = 1.0 / (case.head_dim as f64).sqrt();
                let (fused_out, fused_grads) =
                    run(&case, dtype, |q, k, v| attention(q, k, v, scale, &case.mask, 0.0, Mode::Inference))?;
                let (plain_out, plain_grads) = run(&case, dtype, |q, k, v| composed(q, k, v, scale, &case.mask, Ok))?;
                assert_close(case.name, "output", &fused_out, &plain_out, tolerance);
                for (name, (f, c)) in ["dq", "dk", "dv"].iter().zip(fused_grads.iter().zip(&plain_grads)) {
                    assert_close(case.name, name, f, c, tolerance);
                    assert!(
                        f.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                        "{}: {name} is zero",
                        case.name
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn fused_attention_dropout_matches_the_composed_ops_with_the_same_mask() -> Result<()> {
        let rng = DropoutRng::new(7);
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            for case in cases() {
                let scale = 1.0 / (case.head_dim as f64).sqrt();
                rng.reseed(11);
                let (fused_out, fused_grads) =
                    run(&case, dtype, |q, k, v| attention(q, k, v, scale, &case.mask, 0.3, Mode::Train(&rng)))?;
                rng.reseed(11);
                let draw = Dropout { probability: 0.3, seed: rng.next_seed() };
                let (plain_out, plain_grads) = run(&case, dtype, |q, k, v| {
                    let (batch, heads, queries, head_dim) = q.dims4()?;
                    let (_, kv_heads, keys, _) = k.dims4()?;
                    let dims = Dims { batch, heads, kv_heads, queries, keys, head_dim };
                    let mask = dropout_mask(draw, dims, q.device())?.to_dtype(dtype)?;
                    composed(q, k, v, scale, &case.mask, |probs| probs * mask)
                })?;
                assert_close(case.name, "output", &fused_out, &plain_out, tolerance);
                for (name, (f, c)) in ["dq", "dk", "dv"].iter().zip(fused_grads.iter().zip(&plain_grads)) {
                    assert_close(case.name, name, f, c, tolerance);
                }
                // Dropout changed something.
                let (clean, _) = run(&case, dtype, |q, k, v| composed(q, k, v, scale, &case.mask, Ok))?;
                assert!(max_abs_diff(&clean.to_dtype(DType::F32)?, &fused_out.to_dtype(DType::F32)?) > 1e-3);
            }
        }
        Ok(())
    }

    #[test]
    fn the_composed_ops_get_no_mask_where_every_key_is_seen() {
        let one_token = AttentionMask::causal(Some(4), None);
        assert!(one_token.additive(1, 1, 2, &Device::Cpu).unwrap().is_none(), "window not reached: no mask");
        let windowed = AttentionMask::causal(Some(2), None);
        assert!(windowed.additive(1, 2, 5, &Device::Cpu).unwrap().is_some());
    }

    #[test]
    fn fused_attention_gradients_match_finite_differences() -> Result<()> {
        let case = &cases()[2];
        let scale = 0.4;
        let q = random(&[case.batch, case.heads, case.queries, case.head_dim], DType::F64, 1)?;
        let k = random(&[case.batch, case.kv_heads, case.keys, case.head_dim], DType::F64, 2)?;
        let v = random(&[case.batch, case.kv_heads, case.keys, case.head_dim], DType::F64, 3)?;
        let projection = random(&[case.batch, case.heads, case.queries, case.head_dim], DType::F64, 4)?;
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<f64> {
            (attention(q, k, v, scale, &case.mask, 0.0, Mode::Inference)? * &projection)?.sum_all()?.to_scalar::<f64>()
        };
        let (vq, vk, vv) = (Var::from_tensor(&q)?, Var::from_tensor(&k)?, Var::from_tensor(&v)?);
        let out = attention(vq.as_tensor(), vk.as_tensor(), vv.as_tensor(), scale, &case.mask, 0.0, Mode::Inference)?;
        let grads = (out * &projection)?.sum_all()?.backward()?;
        let inputs = [&q, &k, &v];
        for (which, var) in [&vq, &vk, &vv].iter().enumerate() {
            let analytic = grads.get(var).expect("a gradient").flatten_all()?.to_vec1::<f64>()?;
            let base = inputs[which].flatten_all()?.to_vec1::<f64>()?;
            for index in (0..base.len()).step_by(7) {
                let shifted = |delta: f64| -> Result<f64> {
                    let mut values = base.clone();
                    values[index] += delta;
                    let t = Tensor::from_vec(values, inputs[which].shape(), &Device::Cpu)?;
                    let mut args = [q.clone(), k.clone(), v.clone()];
                    args[which] = t;
                    loss(&args[0], &args[1], &args[2])
                };
                let h = 1e-6;
                let numeric = (shifted(h)? - shifted(-h)?) / (2.0 * h);
                assert!(
                    (numeric - analytic[index]).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "input {which}, element {index}: finite difference {numeric}, backward {}",
                    analytic[index]
                );
            }
        }
        Ok(())
    }
}
