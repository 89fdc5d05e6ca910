//! Hybrid retrieval: the dense ranking (cosine similarity) and the BM25 ranking fused by a convex
//! combination of their min-max normalised scores, and ranking a question's passages by a
//! [`RetrievalMethod`]. The one fusion that evaluation, chat and negative mining share. Each hit
//! keeps its cosine similarity, whichever method ranked it, so a citation's score always means one
//! thing.

use std::collections::HashMap;
use std::hash::Hash;

use attune_shared::RetrievalMethod;

use super::index::Hit;

/// How deep each ranking goes into the fusion.
pub const FUSION_DEPTH: usize = 100;

/// The dense ranking's weight in the fused score; BM25's is one minus it. Chosen on held-out
/// training questions (never test ones) of HaluEval and PubMedQA, for the base retriever and one
/// tuned on 1000 HaluEval triples (`scripts/fusion-proof.py`, `bench/hybrid-fusion-cpu.json`).
pub const DENSE_WEIGHT: f32 = 0.45;

/// Fuses two rankings of the same passages, each best first with its scores (any scale: cosine
/// similarity, BM25), into one, best first with the fused score, `depth` deep. Each ranking is
/// cut to [`FUSION_DEPTH`] and its scores mapped to [0, 1] (its best 1, its last 0: min-max, as
/// Bruch et al. 2023 found a convex combination of such scores to beat reciprocal rank fusion);
/// a passage one ranking lacks scores 0 there. An empty ranking leaves the other's order; ties go
/// to the smaller id.
pub fn fuse<T: Copy + Eq + Hash + Ord>(dense: &[(T, f32)], lexical: &[(T, f32)], depth: usize) -> Vec<(T, f32)> {
    let mut fused: HashMap<T, f32> = HashMap::new();
    for (ranking, weight) in [(dense, DENSE_WEIGHT), (lexical, 1.0 - DENSE_WEIGHT)] {
        let ranking = &ranking[..ranking.len().min(FUSION_DEPTH)];
        let (low, high) =
            ranking.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(_, s)| (lo.min(s), hi.max(s)));
        let range = high - low;
        for &(id, score) in ranking {
            // One passage, or all scored alike: each is the ranking's best.
            let normalised = if range > 0.0 { (score - low) / range } else { 1.0 };
            *fused.entry(id).or_default() += weight * normalised;
        }
    }
    let mut fused: Vec<(T, f32)> = fused.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused.truncate(depth);
    fused
}

/// The `k` best passages by `method`. `dense` is every passage with its cosine similarity, best
/// first; `lexical` the BM25 ranking's passage ids with their scores, best first (empty for `Dense`).
pub fn rank(method: RetrievalMethod, dense: &[Hit], lexical: &[(i64, f32)], k: usize) -> Vec<Hit> {
    let cosine: HashMap<i64, f32> = dense.iter().map(|h| (h.id, h.score)).collect();
    let hit = |id: i64| Hit { id, score: cosine.get(&id).copied().unwrap_or(0.0) };
    match method {
        RetrievalMethod::Dense => dense.iter().take(k).copied().collect(),
        RetrievalMethod::Bm25 => lexical.iter().take(k).map(|&(id, _)| hit(id)).collect(),
        RetrievalMethod::Hybrid => {
            let dense: Vec<(i64, f32)> = dense.iter().take(FUSION_DEPTH).map(|h| (h.id, h.score)).collect();
            fuse(&dense, lexical, k).into_iter().map(|(id, _)| hit(id)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense() -> Vec<Hit> {
        [(10, 0.9), (11, 0.8), (12, 0.7), (13, 0.1)].map(|(id, score)| Hit { id, score }).to_vec()
    }

    #[test]
    fn fusion_weighs_normalised_scores_not_their_scales() {
        // Cosine in [0.1, 0.9], BM25 in [2, 30]: each is mapped to [0, 1] before weighing.
        let dense = [(1, 0.9), (2, 0.5), (3, 0.1)];
        let lexical = [(3, 30.0), (2, 16.0), (4, 2.0)];
        let fused = fuse(&dense, &lexical, 4);
        let score = |id| fused.iter().find(|f| f.0 == id).unwrap().1;
        let (d, l) = (DENSE_WEIGHT, 1.0 - DENSE_WEIGHT);
        assert!((score(1) - d).abs() < 1e-6, "best dense, absent from BM25: {fused:?}");
        assert!((score(2) - (0.5 * d + 0.5 * l)).abs() < 1e-6, "halfway in both: {fused:?}");
        assert!((score(3) - l).abs() < 1e-6, "last dense (0), best BM25 (1): {fused:?}");
        assert!(score(4).abs() < 1e-6, "last BM25, absent from dense: {fused:?}");
        assert!(fused.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {fused:?}");
        assert_eq!(fuse(&dense, &lexical, 2).len(), 2, "cut to depth");
        // Agreement wins: a passage second in both passes one that is first in one ranking only;
        // of those two, BM25's best goes first, as BM25 weighs more (dense 0.45).
        let fused = fuse(&[(1, 1.0), (7, 0.9), (5, 0.0)], &[(9, 10.0), (7, 9.0), (6, 0.0)], 3);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), [7, 9, 1], "{fused:?}");
        assert_eq!(fuse(&[(3, 1.0), (2, 1.0)], &[], 2).iter().map(|f| f.0).collect::<Vec<_>>(), [2, 3], "ties");
    }

    #[test]
    fn fusion_of_one_ranking_keeps_its_order() {
        let dense = [(5, 0.3), (6, 0.2), (4, 0.1)];
        assert_eq!(fuse(&dense, &[], 3).iter().map(|f| f.0).collect::<Vec<_>>(), [5, 6, 4]);
        assert_eq!(fuse(&[], &dense, 3).iter().map(|f| f.0).collect::<Vec<_>>(), [5, 6, 4]);
        // A lone BM25 hit counts as that ranking's best.
        assert_eq!(fuse(&[(1, 0.5), (2, 0.4)], &[(2, 3.0)], 2)[0].0, 2);
        // Only the first FUSION_DEPTH passages of a ranking take part.
        let long: Vec<(usize, f32)> = (0..FUSION_DEPTH + 5).map(|i| (i, -(i as f32))).collect();
        assert_eq!(fuse(&long, &[], usize::MAX).len(), FUSION_DEPTH);
    }

    #[test]
    fn each_method_ranks_by_its_own_evidence_and_keeps_the_cosine() {
        let by = |method, lexical: &[(i64, f32)], k| {
            rank(method, &dense(), lexical, k).iter().map(|h| (h.id, h.score)).collect::<Vec<_>>()
        };
        let lexical = [(13, 8.0), (12, 7.0)];
        assert_eq!(by(RetrievalMethod::Dense, &lexical, 2), [(10, 0.9), (11, 0.8)]);
        assert_eq!(by(RetrievalMethod::Bm25, &lexical, 3), [(13, 0.1), (12, 0.7)], "BM25 finds only two");
        // 13 is BM25's best and dense's last: its 0.55 (BM25's weight) passes 10's 0.45 (dense's);
        // 12 is BM25's last (0) and 0.75 of the way up the dense ranking, so it stays behind 11.
        let fused = by(RetrievalMethod::Hybrid, &lexical, 4);
        assert_eq!(fused.iter().map(|h| h.0).collect::<Vec<_>>(), [13, 10, 11, 12], "{fused:?}");
        assert_eq!(fused.iter().find(|h| h.0 == 13).unwrap().1, 0.1, "a fused hit keeps its cosine similarity");
        // A passage BM25 finds that is not in the dense list still gets a place (cosine 0).
        assert_eq!(by(RetrievalMethod::Hybrid, &[(99, 1.0)], 5).iter().filter(|h| h.0 == 99).count(), 1);
        assert_eq!(by(RetrievalMethod::Hybrid, &[], 2), [(10, 0.9), (11, 0.8)], "no words in common: dense");
    }
}
