//! Ranking a question's passages by a [`RetrievalMethod`]: the dense ranking (every passage's
//! cosine similarity), the BM25 ranking, or both fused by reciprocal rank fusion. Each hit keeps its
//! cosine similarity, whichever method ranked it, so a citation's score always means one thing.

use std::collections::HashMap;

use attune_shared::RetrievalMethod;

use super::bm25::reciprocal_rank_fusion;
use super::index::Hit;

/// How deep each ranking goes into the fusion (as evaluation's `FUSION_DEPTH`).
pub const FUSION_DEPTH: usize = 100;

/// The `k` best passages by `method`. `dense` is every passage with its cosine similarity, best
/// first; `lexical` the BM25 ranking's passage ids, best first (empty for `Dense`).
pub fn rank(method: RetrievalMethod, dense: &[Hit], lexical: &[i64], k: usize) -> Vec<Hit> {
    let cosine: HashMap<i64, f32> = dense.iter().map(|h| (h.id, h.score)).collect();
    let hit = |id: i64| Hit { id, score: cosine.get(&id).copied().unwrap_or(0.0) };
    match method {
        RetrievalMethod::Dense => dense.iter().take(k).copied().collect(),
        RetrievalMethod::Bm25 => lexical.iter().take(k).map(|&id| hit(id)).collect(),
        RetrievalMethod::Hybrid => {
            // Fusion works on positions; ids are mapped to their order of first appearance.
            let ids: Vec<i64> = dense.iter().map(|h| h.id).take(FUSION_DEPTH).collect();
            let mut position: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
            let mut by_position = ids.clone();
            let mut lexical_positions = Vec::new();
            for &id in lexical.iter().take(FUSION_DEPTH) {
                let next = by_position.len();
                let at = *position.entry(id).or_insert_with(|| {
                    by_position.push(id);
                    next
                });
                lexical_positions.push(at);
            }
            let dense_positions: Vec<usize> = (0..ids.len()).collect();
            reciprocal_rank_fusion(&[&dense_positions, &lexical_positions], k)
                .into_iter()
                .map(|p| hit(by_position[p]))
                .collect()
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
    fn each_method_ranks_by_its_own_evidence_and_keeps_the_cosine() {
        let by = |method, lexical: &[i64], k| {
            rank(method, &dense(), lexical, k).iter().map(|h| (h.id, h.score)).collect::<Vec<_>>()
        };
        assert_eq!(by(RetrievalMethod::Dense, &[13, 12], 2), [(10, 0.9), (11, 0.8)]);
        assert_eq!(by(RetrievalMethod::Bm25, &[13, 12], 3), [(13, 0.1), (12, 0.7)], "BM25 finds only two");
        // 13 and 12 are in both rankings, so they pass 10 (first by cosine alone); 13 is first by
        // BM25 and last by cosine: 1/61 + 1/64 beats 12's 1/62 + 1/63.
        let fused = by(RetrievalMethod::Hybrid, &[13, 12], 4);
        assert_eq!(fused.iter().map(|h| h.0).collect::<Vec<_>>(), [13, 12, 10, 11], "{fused:?}");
        assert_eq!(fused[0].1, 0.1, "a fused hit keeps its cosine similarity");
        // A passage BM25 finds that is not in the dense list still gets a place (score 0).
        assert_eq!(by(RetrievalMethod::Hybrid, &[99], 5).iter().filter(|h| h.0 == 99).count(), 1);
        assert_eq!(by(RetrievalMethod::Hybrid, &[], 2), [(10, 0.9), (11, 0.8)], "no words in common: dense");
    }
}
