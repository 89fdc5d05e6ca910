//! Metric functions: hit@k, recall@k, MRR@k and nDCG@k for rankings, and SQuAD's exact match and
//! token F1 (lower-cased, punctuation and articles removed) for answers.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// Retrieval quality over a set of queries, each metric averaged over queries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetrievalMetrics {
    pub queries: usize,
    /// `k` → share of queries with a relevant passage in the top k.
    pub hit: BTreeMap<usize, f64>,
    /// `k` → share of each query's relevant passages found in the top k.
    pub recall: BTreeMap<usize, f64>,
    /// Mean reciprocal rank of the first relevant passage within the top 10 (0 beyond).
    pub mrr_at_10: f64,
    /// nDCG@10 with binary relevance.
    pub ndcg_at_10: f64,
}

impl RetrievalMetrics {
    /// `rankings[q]`: corpus indices, best first (at least max(ks, 10) long where the corpus allows);
    /// `relevant[q]`: the relevant corpus indices of query q.
    pub fn compute(rankings: &[Vec<usize>], relevant: &[HashSet<usize>], ks: &[usize]) -> Self {
        assert_eq!(rankings.len(), relevant.len());
        let n = rankings.len();
        let mut metrics = RetrievalMetrics { queries: n, ..Default::default() };
        if n == 0 {
            return metrics;
        }
        for &k in ks {
            let (mut hits, mut recall) = (0.0, 0.0);
            for (ranking, gold) in rankings.iter().zip(relevant) {
                let found = ranking.iter().take(k).filter(|i| gold.contains(i)).count();
                hits += f64::from(u8::from(found > 0));
                recall += if gold.is_empty() { 0.0 } else { found as f64 / gold.len() as f64 };
            }
            metrics.hit.insert(k, hits / n as f64);
            metrics.recall.insert(k, recall / n as f64);
        }
        for (ranking, gold) in rankings.iter().zip(relevant) {
            if let Some(rank) = ranking.iter().take(10).position(|i| gold.contains(i)) {
                metrics.mrr_at_10 += 1.0 / (rank + 1) as f64;
            }
            let dcg: f64 = ranking
                .iter()
                .take(10)
                .enumerate()
                .filter(|(_, i)| gold.contains(i))
                .map(|(r, _)| 1.0 / (r as f64 + 2.0).log2())
                .sum();
            let ideal: f64 = (0..gold.len().min(10)).map(|r| 1.0 / (r as f64 + 2.0).log2()).sum();
            if ideal > 0.0 {
                metrics.ndcg_at_10 += dcg / ideal;
            }
        }
        metrics.mrr_at_10 /= n as f64;
        metrics.ndcg_at_10 /= n as f64;
        metrics
    }

    /// Flat `{"hit@1": …, "recall@1": …, "mrr@10": …, "ndcg@10": …}` for JSON reports.
    pub fn flat(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.hit {
            out.insert(format!("hit@{k}"), *v);
        }
        for (k, v) in &self.recall {
            out.insert(format!("recall@{k}"), *v);
        }
        out.insert("mrr@10".into(), self.mrr_at_10);
        out.insert("ndcg@10".into(), self.ndcg_at_10);
        out
    }
}

/// Bootstrap resamples behind every interval a report shows.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// The 2.5th and 97.5th percentiles of `samples` (sorted in place).
fn percentile_interval(samples: &mut [f64]) -> [f64; 2] {
    if samples.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((q * (samples.len() - 1) as f64).round() as usize).min(samples.len() - 1)];
    [at(0.025), at(0.975)]
}

/// 95% percentile-bootstrap intervals of every retrieval metric: the queries resampled with
/// replacement `resamples` times (seeded, so a report is reproducible), the metrics recomputed.
pub fn bootstrap_retrieval(
    rankings: &[Vec<usize>],
    relevant: &[HashSet<usize>],
    ks: &[usize],
    resamples: usize,
    seed: u64,
) -> BTreeMap<String, [f64; 2]> {
    use rand::{Rng, SeedableRng};
    let n = rankings.len();
    if n == 0 {
        return BTreeMap::new();
    }
    let depth = ks.iter().copied().max().unwrap_or(10).max(10);
    let top: Vec<Vec<usize>> = rankings.iter().map(|r| r.iter().take(depth).copied().collect()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..resamples {
        let picks: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let ranks: Vec<Vec<usize>> = picks.iter().map(|&q| top[q].clone()).collect();
        let gold: Vec<HashSet<usize>> = picks.iter().map(|&q| relevant[q].clone()).collect();
        for (name, value) in RetrievalMetrics::compute(&ranks, &gold, ks).flat() {
            samples.entry(name).or_default().push(value);
        }
    }
    samples.into_iter().map(|(name, mut values)| (name, percentile_interval(&mut values))).collect()
}

/// 95% percentile-bootstrap interval of the mean of `values` (per-question scores).
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    use rand::{Rng, SeedableRng};
    if values.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    percentile_interval(&mut means)
}

/// SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// 1.0 when the normalised prediction equals the normalised answer.
pub fn exact_match(prediction: &str, answer: &str) -> f64 {
    f64::from(u8::from(normalize_answer(prediction) == normalize_answer(answer)))
}

/// Token-overlap F1 of the normalised strings (SQuAD's definition).
pub fn token_f1(prediction: &str, answer: &str) -> f64 {
    let predicted = normalize_answer(prediction);
    let expected = normalize_answer(answer);
    let p: Vec<&str> = predicted.split_whitespace().collect();
    let a: Vec<&str> = expected.split_whitespace().collect();
    if p.is_empty() || a.is_empty() {
        return f64::from(u8::from(p == a));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &a {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &p {
        if let Some(c) = counts.get_mut(w)
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / a.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Mean exact match and F1 over aligned (prediction, answer) pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AnswerMetrics {
    pub questions: usize,
    pub exact_match: f64,
    pub f1: f64,
}

impl AnswerMetrics {
    pub fn compute(pairs: &[(String, String)]) -> Self {
        let n = pairs.len();
        if n == 0 {
            return AnswerMetrics::default();
        }
        let em: f64 = pairs.iter().map(|(p, a)| exact_match(p, a)).sum();
        let f1: f64 = pairs.iter().map(|(p, a)| token_f1(p, a)).sum();
        AnswerMetrics { questions: n, exact_match: em / n as f64, f1: f1 / n as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_metrics_on_hand_made_cases() {
        let rankings = vec![vec![3, 1, 2, 0], vec![0, 1, 2, 3], vec![2, 0, 1, 3]];
        let relevant = vec![HashSet::from([3]), HashSet::from([2]), HashSet::from([9])];
        let m = RetrievalMetrics::compute(&rankings, &relevant, &[1, 3]);
        assert_eq!(m.hit[&1], 1.0 / 3.0);
        assert_eq!(m.hit[&3], 2.0 / 3.0);
        assert_eq!(m.recall[&3], 2.0 / 3.0);
        assert!((m.mrr_at_10 - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((m.ndcg_at_10 - (1.0 + 1.0 / 4f64.log2()) / 3.0).abs() < 1e-12);
        // Two relevant passages, one found at rank 2: recall 1/2, nDCG 1/log2(3) / (1 + 1/log2(3)).
        let m = RetrievalMetrics::compute(&[vec![5, 7, 8]], &[HashSet::from([7, 6])], &[1, 3]);
        assert_eq!((m.hit[&1], m.hit[&3], m.recall[&3]), (0.0, 1.0, 0.5));
        let g = 1.0 / 3f64.log2();
        assert!((m.ndcg_at_10 - g / (1.0 + g)).abs() < 1e-12);
        assert_eq!(m.flat()["hit@3"], 1.0);
    }

    #[test]
    fn squad_normalisation_exact_match_and_f1() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(exact_match("the eiffel tower.", "Eiffel Tower"), 1.0);
        assert_eq!(exact_match("Eiffel", "Eiffel Tower"), 0.0);
        assert!((token_f1("Eiffel", "Eiffel Tower") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("Paris France", "London"), 0.0);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("a", "the"), 1.0, "both empty after normalisation");
        // Repeated tokens count once each.
        assert!((token_f1("yes yes", "yes") - 2.0 / 3.0).abs() < 1e-12);
        let m = AnswerMetrics::compute(&[("Paris".into(), "paris".into()), ("Rome".into(), "Paris".into())]);
        assert_eq!((m.questions, m.exact_match, m.f1), (2, 0.5, 0.5));
    }

    #[test]
    fn bootstrap_intervals_hold_the_estimate_and_narrow_with_more_questions() {
        let values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        let [lo, hi] = bootstrap_mean(&values, BOOTSTRAP_RESAMPLES, 7);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(lo <= mean && mean <= hi && lo >= 0.0 && hi <= 1.0, "{lo} {mean} {hi}");
        assert_eq!(bootstrap_mean(&values, BOOTSTRAP_RESAMPLES, 7), [lo, hi], "seeded");
        let many: Vec<f64> = values.iter().cycle().take(800).copied().collect();
        let [lo2, hi2] = bootstrap_mean(&many, BOOTSTRAP_RESAMPLES, 7);
        assert!(hi2 - lo2 < (hi - lo) / 4.0, "{lo2}..{hi2} vs {lo}..{hi}");
        assert_eq!(bootstrap_mean(&[0.5; 3], 100, 1), [0.5, 0.5]);
        // Retrieval: two questions, one found first, one missed.
        let rankings = vec![vec![0, 1], vec![1, 0]];
        let relevant = vec![HashSet::from([0]), HashSet::from([5])];
        let intervals = bootstrap_retrieval(&rankings, &relevant, &[1], 200, 3);
        assert_eq!(intervals["hit@1"], [0.0, 1.0]);
        assert!(intervals.contains_key("mrr@10") && intervals.contains_key("ndcg@10"));
    }
}
