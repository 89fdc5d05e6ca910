//! The losses: in-batch contrastive (InfoNCE) for the retriever, and the retriever-marginalized
//! negative log-likelihood of the answer for the generator (RAG-Sequence, or RAG-Token), and the
//! retriever's LM-supervised losses (LSR, EMDR²), all in log space.

use candle_core::{D, DType, Tensor};

use super::error::Result;

/// Added to masked scores: far below any real score (scores are cosine × scale, |s| ≤ scale).
const MASKED: f32 = -1e4;

/// Settings of the contrastive loss.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Contrastive {
    /// Multiplies cosine similarities before the softmax (sentence-transformers' default is 20).
    pub scale: f64,
    /// Also score each passage against every query (passage → query), averaged with query → passage.
    pub symmetric: bool,
}

/// In-batch negatives InfoNCE. `queries` `(b, d)` and `passages` `(n, d)`, `n ≥ b`, both
/// normalised: passage `i` is query `i`'s positive, every other passage a negative (rows after `b`
/// are extra negatives, e.g. mined hard negatives). `passage_keys[j]` identifies passage `j`'s
/// text: a passage equal to the positive is not a negative and is masked out.
pub fn contrastive_loss(
    queries: &Tensor,
    passages: &Tensor,
    passage_keys: &[u64],
    config: Contrastive,
) -> Result<Tensor> {
    let (batch, _) = queries.dims2()?;
    let (count, _) = passages.dims2()?;
    assert_eq!(passage_keys.len(), count, "one key per passage");
    assert!(count >= batch, "every query needs its positive passage");
    let scores = (queries.matmul(&passages.t()?)? * config.scale)?;
    let mask = duplicate_mask(batch, count, |i, j| passage_keys[i] == passage_keys[j]);
    let mask = Tensor::from_vec(mask, (batch, count), queries.device())?.to_dtype(scores.dtype())?;
    let targets = Tensor::arange(0u32, batch as u32, queries.device())?;
    let forward = candle_nn::loss::cross_entropy(&(scores.clone() + mask)?, &targets)?;
    if !config.symmetric {
        return Ok(forward);
    }
    // Passage i against every query: the queries whose positive is the same text are positives too.
    let backward_scores = scores.narrow(1, 0, batch)?.t()?;
    let mask = duplicate_mask(batch, batch, |i, j| passage_keys[i] == passage_keys[j]);
    let mask = Tensor::from_vec(mask, (batch, batch), queries.device())?.to_dtype(scores.dtype())?;
    let backward = candle_nn::loss::cross_entropy(&(backward_scores + mask)?, &targets)?;
    Ok(((forward + backward)? * 0.5)?)
}

/// `(rows, cols)` additive mask: `MASKED` where `same(i, j)` for `j ≠ i`, else 0.
fn duplicate_mask(rows: usize, cols: usize, same: impl Fn(usize, usize) -> bool) -> Vec<f32> {
    (0..rows)
        .flat_map(|i| (0..cols).map(move |j| (i, j)))
        .map(|(i, j)| if j != i && same(i, j) { MASKED } else { 0.0 })
        .collect()
}

/// `log Σ exp(xs)` over `dim`, stable (the shift by the maximum carries no gradient, and needs none).
pub fn log_sum_exp(xs: &Tensor, dim: usize) -> Result<Tensor> {
    let max = xs.max_keepdim(dim)?.detach();
    let sum = xs.broadcast_sub(&max)?.exp()?.sum_keepdim(dim)?;
    Ok((sum.log()? + max)?.squeeze(dim)?)
}

/// Log-probability of each target token: `logits` `(n, t, vocab)`, `targets` `(n, t)` → `(n, t)`
/// in f32 (f64 stays f64), as `logit[target] − logsumexp(logits)`.
pub fn token_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = if logits.dtype() == DType::F64 { logits.clone() } else { logits.to_dtype(DType::F32)? };
    let picked = logits.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?;
    Ok((picked - log_sum_exp(&logits, 2)?)?)
}

/// RAG-Sequence: for each query, `−log Σ_j p(z_j|q) · p(a|q, z_j)` with `p(z|q)` the softmax of
/// `retrieval_scores` `(b, k)` over the candidates and `answer_log_probs` `(b, k)` the summed
/// log-probability of the answer's tokens given each candidate. Returns `(b,)`.
pub fn rag_sequence_nll(retrieval_scores: &Tensor, answer_log_probs: &Tensor) -> Result<Tensor> {
    let log_prior = candle_nn::ops::log_softmax(retrieval_scores, 1)?;
    let joint = (log_prior + answer_log_probs)?;
    Ok(log_sum_exp(&joint, 1)?.neg()?)
}

/// RAG-Token: the passage is marginalized per answer token,
/// `−Σ_t log Σ_j p(z_j|q) · p(a_t | q, z_j, a_<t)`. `token_log_probs` `(b, k, t)`, `token_mask`
/// `(b, t)` (1 for real answer tokens). Returns `(b,)`.
pub fn rag_token_nll(retrieval_scores: &Tensor, token_log_probs: &Tensor, token_mask: &Tensor) -> Result<Tensor> {
    let log_prior = candle_nn::ops::log_softmax(retrieval_scores, 1)?.unsqueeze(2)?;
    let joint = token_log_probs.broadcast_add(&log_prior)?;
    let per_token = log_sum_exp(&joint, 1)?;
    Ok((per_token * token_mask)?.sum(1)?.neg()?)
}

/// LM-supervised retrieval (REPLUG-LSR; Atlas' perplexity distillation):
/// `KL( softmax(retrieval_scores) ‖ softmax(answer_log_probs / β) )` per query, over its `(b, k)`
/// candidates, with the generator's side detached — only the retriever learns from it, towards the
/// passages that make the answer likelier. Returns `(b,)`.
pub fn lsr_loss(retrieval_scores: &Tensor, answer_log_probs: &Tensor, temperature: f64) -> Result<Tensor> {
    let log_retriever = candle_nn::ops::log_softmax(retrieval_scores, 1)?;
    let target = (answer_log_probs.detach().to_dtype(log_retriever.dtype())? / temperature)?;
    let log_target = candle_nn::ops::log_softmax(&target, 1)?;
    let kl = (log_retriever.exp()? * (log_retriever - log_target)?)?;
    Ok(kl.sum(1)?)
}

/// EMDR² (Sachan et al. 2021): `−log Σ_d p_R(d|q) · p_LM(a|q,d)` per query over its `(b, k)`
/// candidates, with the generator's side detached — the marginal likelihood as a loss of the
/// retriever alone. Its gradient moves each candidate's prior by the gap between that passage's
/// posterior and its prior. Returns `(b,)`.
pub fn emdr_loss(retrieval_scores: &Tensor, answer_log_probs: &Tensor) -> Result<Tensor> {
    let answer_log_probs = answer_log_probs.detach().to_dtype(retrieval_scores.dtype())?;
    rag_sequence_nll(retrieval_scores, &answer_log_probs)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    fn normalised(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows
            .iter()
            .flat_map(|r| {
                let n = (r[0] * r[0] + r[1] * r[1]).sqrt();
                [r[0] / n, r[1] / n]
            })
            .collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    /// Each entry of `analytic` (the gradient of `loss` at `base`) against central differences.
    fn assert_central_differences(loss: &dyn Fn(&Tensor) -> f64, base: &[Vec<f64>], analytic: &[Vec<f64>]) {
        let h = 1e-6;
        for i in 0..base.len() {
            for j in 0..base[i].len() {
                let (mut plus, mut minus) = (base.to_vec(), base.to_vec());
                plus[i][j] += h;
                minus[i][j] -= h;
                let t = |v: Vec<Vec<f64>>| Tensor::new(v, &Device::Cpu).unwrap();
                let numeric = (loss(&t(plus)) - loss(&t(minus))) / (2.0 * h);
                assert!((numeric - analytic[i][j]).abs() < 1e-7, "{numeric} vs {}", analytic[i][j]);
            }
        }
    }

    #[test]
    fn contrastive_loss_by_hand() {
        // Orthogonal unit vectors: each query matches its passage with cosine 1, the other with 0.
        let q = normalised(&[[1.0, 0.0], [0.0, 1.0]]);
        let p = normalised(&[[1.0, 0.0], [0.0, 1.0]]);
        let loss = contrastive_loss(&q, &p, &[1, 2], Contrastive { scale: 2.0, symmetric: false }).unwrap();
        let expected = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
        assert!((scalar(&loss) - expected).abs() < 1e-12, "{} vs {expected}", scalar(&loss));
        // Symmetric: the same by symmetry of this example.
        let sym = contrastive_loss(&q, &p, &[1, 2], Contrastive { scale: 2.0, symmetric: true }).unwrap();
        assert!((scalar(&sym) - expected).abs() < 1e-12);
        // A hard negative equal to query 0 raises its loss.
        let with_hard = normalised(&[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]);
        let harder =
            contrastive_loss(&q, &with_hard, &[1, 2, 3], Contrastive { scale: 2.0, symmetric: false }).unwrap();
        assert!(scalar(&harder) > expected + 0.1);
    }

    #[test]
    fn identical_passages_are_not_negatives() {
        // Two questions about the same passage: unmasked, each would push away its own positive.
        let q = normalised(&[[1.0, 0.2], [1.0, -0.2]]);
        let p = normalised(&[[1.0, 0.0], [1.0, 0.0]]);
        let config = Contrastive { scale: 20.0, symmetric: true };
        let masked = contrastive_loss(&q, &p, &[7, 7], config).unwrap();
        assert!(scalar(&masked).abs() < 1e-12, "nothing left to contrast: {}", scalar(&masked));
        let unmasked = contrastive_loss(&q, &p, &[7, 8], config).unwrap();
        assert!((scalar(&unmasked) - 2f64.ln()).abs() < 1e-9, "two equal scores: log 2");
    }

    #[test]
    fn rag_sequence_marginalizes_by_hand() {
        // p(z|q) = softmax(0, ln 3) = (1/4, 3/4); p(a|q,z) = (1/2, 1/10):
        // p(a|q) = 1/8 + 3/40 = 1/5, so the loss is ln 5. DALM's "marginalization" (gold only)
        // would give −ln(1/4 · 1/2) instead.
        let scores = Tensor::new(&[[0.0f64, 3f64.ln()]], &Device::Cpu).unwrap();
        let log_probs = Tensor::new(&[[0.5f64.ln(), 0.1f64.ln()]], &Device::Cpu).unwrap();
        let nll = rag_sequence_nll(&scores, &log_probs).unwrap();
        assert!((scalar(&nll.squeeze(0).unwrap()) - 5f64.ln()).abs() < 1e-12);
        // With one candidate it is the plain NLL.
        let one = rag_sequence_nll(&scores.narrow(1, 0, 1).unwrap(), &log_probs.narrow(1, 0, 1).unwrap()).unwrap();
        assert!((scalar(&one.squeeze(0).unwrap()) - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn rag_token_marginalizes_each_token_by_hand() {
        // Two tokens; priors (1/4, 3/4). Token 1: (1/2, 1/10) → 1/5; token 2: (1, 1/3) → 1/2 (masked third).
        let scores = Tensor::new(&[[0.0f64, 3f64.ln()]], &Device::Cpu).unwrap();
        let lp =
            Tensor::new(&[[[0.5f64.ln(), 0.0, -9.0], [0.1f64.ln(), (1.0f64 / 3.0).ln(), -9.0]]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1.0f64, 1.0, 0.0]], &Device::Cpu).unwrap();
        let nll = rag_token_nll(&scores, &lp, &mask).unwrap();
        let expected = -(0.2f64.ln() + 0.5f64.ln());
        assert!((scalar(&nll.squeeze(0).unwrap()) - expected).abs() < 1e-12);
    }

    #[test]
    fn token_log_probs_pick_the_targets() {
        let logits = Tensor::new(&[[[1.0f32, 2.0, 3.0], [0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[2u32, 1]], &Device::Cpu).unwrap();
        let lp = token_log_probs(&logits, &targets).unwrap().to_vec2::<f32>().unwrap();
        let z = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((lp[0][0] - (3.0 - z)).abs() < 1e-6);
        assert!((lp[0][1] - (1.0f32 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn lsr_by_hand_and_its_gradient_by_finite_differences() {
        // Retriever (1/4, 3/4); the LM's likelihoods (1/2, 1/10) at β = 1 give the target (5/6, 1/6):
        // KL = 1/4 ln((1/4)/(5/6)) + 3/4 ln((3/4)/(1/6)).
        let scores = Tensor::new(&[[0.0f64, 3f64.ln()]], &Device::Cpu).unwrap();
        let log_probs = Tensor::new(&[[0.5f64.ln(), 0.1f64.ln()]], &Device::Cpu).unwrap();
        let kl = scalar(&lsr_loss(&scores, &log_probs, 1.0).unwrap().squeeze(0).unwrap());
        let expected = 0.25 * (0.25f64 / (5.0 / 6.0)).ln() + 0.75 * (0.75f64 / (1.0 / 6.0)).ln();
        assert!((kl - expected).abs() < 1e-12, "{kl} vs {expected}");
        // Agreeing distributions cost nothing; a high temperature flattens the target.
        let agree = Tensor::new(&[[(1.0f64 / 4.0).ln(), (3.0f64 / 4.0).ln()]], &Device::Cpu).unwrap();
        assert!(scalar(&lsr_loss(&scores, &agree, 1.0).unwrap().sum_all().unwrap()).abs() < 1e-12);
        let flat = scalar(&lsr_loss(&scores, &log_probs, 1e6).unwrap().sum_all().unwrap());
        let to_uniform = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((flat - to_uniform).abs() < 1e-6, "{flat} vs {to_uniform}");
        // The gradient reaches the scores only, and matches finite differences.
        let scores = Var::new(&[[0.3f64, -0.2, 1.1], [0.0, 0.5, -0.7]], &Device::Cpu).unwrap();
        let log_probs = Var::new(&[[-2.0f64, -0.5, -3.0], [-1.0, -4.0, -0.2]], &Device::Cpu).unwrap();
        let loss = |s: &Tensor| scalar(&lsr_loss(s, log_probs.as_tensor(), 0.7).unwrap().sum_all().unwrap());
        let grads =
            lsr_loss(scores.as_tensor(), log_probs.as_tensor(), 0.7).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&log_probs).is_none(), "the generator's side is detached");
        let analytic = grads.get(&scores).unwrap().to_vec2::<f64>().unwrap();
        assert_central_differences(&loss, &scores.as_tensor().to_vec2::<f64>().unwrap(), &analytic);
    }

    #[test]
    fn rag_sequence_gradient_matches_finite_differences() {
        let scores = Var::new(&[[0.3f64, -0.2, 1.1], [0.0, 0.5, -0.7]], &Device::Cpu).unwrap();
        let log_probs = Var::new(&[[-2.0f64, -0.5, -3.0], [-1.0, -4.0, -0.2]], &Device::Cpu).unwrap();
        let loss = |s: &Tensor, l: &Tensor| scalar(&rag_sequence_nll(s, l).unwrap().sum_all().unwrap());
        let grads =
            rag_sequence_nll(scores.as_tensor(), log_probs.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&scores, &log_probs] {
            let analytic = grads.get(var).unwrap().to_vec2::<f64>().unwrap();
            let base = var.as_tensor().to_vec2::<f64>().unwrap();
            for i in 0..2 {
                for j in 0..3 {
                    let h = 1e-6;
                    let mut plus = base.clone();
                    plus[i][j] += h;
                    let mut minus = base.clone();
                    minus[i][j] -= h;
                    let t = |v: Vec<Vec<f64>>| Tensor::new(v, &Device::Cpu).unwrap();
                    let (sp, sm) = if std::ptr::eq(var, &scores) {
                        (loss(&t(plus), log_probs.as_tensor()), loss(&t(minus), log_probs.as_tensor()))
                    } else {
                        (loss(scores.as_tensor(), &t(plus)), loss(scores.as_tensor(), &t(minus)))
                    };
                    let numeric = (sp - sm) / (2.0 * h);
                    assert!((numeric - analytic[i][j]).abs() < 1e-7, "{numeric} vs {}", analytic[i][j]);
                }
            }
        }
    }

    #[test]
    fn emdr_by_hand_and_its_gradient_by_finite_differences() {
        // Retriever (1/4, 3/4), the LM's likelihoods (1/2, 1/10): −ln(1/8 + 3/40) = −ln(1/5).
        let scores = Tensor::new(&[[0.0f64, 3f64.ln()]], &Device::Cpu).unwrap();
        let log_probs = Tensor::new(&[[0.5f64.ln(), 0.1f64.ln()]], &Device::Cpu).unwrap();
        let value = scalar(&emdr_loss(&scores, &log_probs).unwrap().squeeze(0).unwrap());
        assert!((value - 5f64.ln()).abs() < 1e-12, "{value} vs {}", 5f64.ln());
        // The gradient of each score is prior − posterior: (1/4 − 5/8, 3/4 − 3/8).
        let var = Var::new(&[[0.0f64, 3f64.ln()]], &Device::Cpu).unwrap();
        let lp = Var::new(&[[0.5f64.ln(), 0.1f64.ln()]], &Device::Cpu).unwrap();
        let grads = emdr_loss(var.as_tensor(), lp.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&lp).is_none(), "the generator's side is detached");
        let g = grads.get(&var).unwrap().to_vec2::<f64>().unwrap();
        assert!((g[0][0] - (0.25 - 0.625)).abs() < 1e-12 && (g[0][1] - (0.75 - 0.375)).abs() < 1e-12, "{g:?}");
        // Finite differences on a bigger case.
        let scores = Var::new(&[[0.3f64, -0.2, 1.1], [0.0, 0.5, -0.7]], &Device::Cpu).unwrap();
        let log_probs = Tensor::new(&[[-2.0f64, -0.5, -3.0], [-1.0, -4.0, -0.2]], &Device::Cpu).unwrap();
        let loss = |s: &Tensor| scalar(&emdr_loss(s, &log_probs).unwrap().sum_all().unwrap());
        let grads = emdr_loss(scores.as_tensor(), &log_probs).unwrap().sum_all().unwrap().backward().unwrap();
        let analytic = grads.get(&scores).unwrap().to_vec2::<f64>().unwrap();
        assert_central_differences(&loss, &scores.as_tensor().to_vec2::<f64>().unwrap(), &analytic);
    }
}
