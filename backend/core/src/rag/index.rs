//! The passage index chat retrieves from: the [`VectorIndex`] trait (so an approximate index or an
//! external vector database can take its place) and [`ExactIndex`], every passage's embedding in
//! one matrix on the device, searched with one matrix product, saved to disk and keyed on the
//! retriever (with its adapter) and the passages' revision so a stale copy is never used.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::ModelError;
use crate::model::retriever::{Retriever, TextRole};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("index math failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot {action} the index at {path}: {error}")]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
    #[error("the index at {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("the query has {got} dimensions but the index {expected}")]
    Dimensions { got: usize, expected: usize },
}

/// What an index was built from; an index answers only for the key it was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexKey {
    /// The retriever's folder and its adapter (with the adapter file's size and modification time).
    pub retriever: String,
    /// The store's passage revision when the index was built.
    pub revision: i64,
}

/// One search result: a passage id and its similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: i64,
    pub score: f32,
}

/// Nearest-neighbour search over passage embeddings.
pub trait VectorIndex: Send + Sync {
    /// What the index was built from.
    fn key(&self) -> &IndexKey;
    /// Passages in the index.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` passages most similar to `query` (an embedding from the same retriever), best first.
    fn search(&self, query: &Tensor, k: usize) -> Result<Vec<Hit>, IndexError>;
}

/// Exact search: all embeddings in one `(passages, dim)` matrix on the retriever's device.
pub struct ExactIndex {
    key: IndexKey,
    ids: Vec<i64>,
    embeddings: Tensor,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    key: IndexKey,
    passages: usize,
    dim: usize,
}

const MANIFEST: &str = "manifest.json";
const EMBEDDINGS: &str = "embeddings.safetensors";

impl ExactIndex {
    /// Embeds `passages` (id, text) with `retriever`, `batch` at a time; `progress(done, total)`
    /// after each batch.
    pub fn build(
        key: IndexKey,
        retriever: &Retriever,
        passages: &[(i64, &str)],
        batch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, IndexError> {
        let mut parts = Vec::new();
        let mut done = 0;
        progress(0, passages.len());
        for chunk in passages.chunks(batch.max(1)) {
            let texts: Vec<&str> = chunk.iter().map(|(_, text)| *text).collect();
            parts.push(retriever.embed(&texts, TextRole::Passage, texts.len())?);
            done += chunk.len();
            progress(done, passages.len());
        }
        let device = retriever.model().device().clone();
        let embeddings = match parts.is_empty() {
            true => Tensor::zeros((0, retriever.hidden_size()), DType::F32, &device)?,
            false => Tensor::cat(&parts, 0)?,
        };
        Ok(ExactIndex { key, ids: passages.iter().map(|(id, _)| *id).collect(), embeddings })
    }

    /// Writes the index into `dir` (replacing what is there) through a temporary folder, so a crash
    /// never leaves a half-written index behind.
    pub fn save(&self, dir: &Path) -> Result<(), IndexError> {
        fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IndexError + 'a {
            move |error| IndexError::Io { action, path: path.to_owned(), error }
        }
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        let temp = parent.join(format!(
            ".{}.tmp-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&temp);
        std::fs::create_dir_all(&temp).map_err(io("create", &temp))?;
        let ids = Tensor::new(self.ids.as_slice(), &Device::Cpu)?;
        let embeddings = self.embeddings.to_device(&Device::Cpu)?;
        candle_core::safetensors::save(
            &[("ids".to_owned(), ids), ("embeddings".to_owned(), embeddings)].into_iter().collect(),
            temp.join(EMBEDDINGS),
        )?;
        let manifest = Manifest { key: self.key.clone(), passages: self.ids.len(), dim: self.dim() };
        let text = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
        std::fs::write(temp.join(MANIFEST), text).map_err(io("write", &temp))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&temp, dir).map_err(io("move", dir))?;
        Ok(())
    }

    /// Reads the index saved in `dir` if it was built for `key`; `Ok(None)` when there is none or
    /// it is stale (other passages, another retriever or adapter).
    pub fn load(dir: &Path, key: &IndexKey, device: &Device) -> Result<Option<Self>, IndexError> {
        let manifest_path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(IndexError::Io { action: "read", path: manifest_path, error }),
        };
        let corrupt = |message: String| IndexError::Corrupt { path: dir.to_owned(), message };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if &manifest.key != key {
            return Ok(None);
        }
        let tensors = candle_core::safetensors::load(dir.join(EMBEDDINGS), &Device::Cpu)?;
        let (Some(ids), Some(embeddings)) = (tensors.get("ids"), tensors.get("embeddings")) else {
            return Err(corrupt("ids or embeddings missing".into()));
        };
        let ids = ids.to_vec1::<i64>()?;
        if embeddings.dims() != [manifest.passages, manifest.dim] || ids.len() != manifest.passages {
            return Err(corrupt(format!("shape {:?} does not match the manifest", embeddings.dims())));
        }
        Ok(Some(ExactIndex { key: manifest.key, ids, embeddings: embeddings.to_device(device)? }))
    }

    pub fn dim(&self) -> usize {
        self.embeddings.dims().get(1).copied().unwrap_or(0)
    }
}

impl VectorIndex for ExactIndex {
    fn key(&self) -> &IndexKey {
        &self.key
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn search(&self, query: &Tensor, k: usize) -> Result<Vec<Hit>, IndexError> {
        let query = query.flatten_all()?.to_dtype(DType::F32)?.to_device(self.embeddings.device())?;
        if query.elem_count() != self.dim() {
            return Err(IndexError::Dimensions { got: query.elem_count(), expected: self.dim() });
        }
        if self.ids.is_empty() {
            return Ok(Vec::new());
        }
        let scores = self.embeddings.matmul(&query.unsqueeze(1)?)?.flatten_all()?.to_vec1::<f32>()?;
        let order = best_first((0..scores.len()).collect(), &scores, k);
        Ok(order.into_iter().map(|i| Hit { id: self.ids[i], score: scores[i] }).collect())
    }
}

/// The `k` of `candidates` (positions in `scores`) with the highest scores, best first, ties in
/// position order: a partial selection, then a sort of the `k` alone.
pub fn best_first(mut candidates: Vec<usize>, scores: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k, order);
        candidates.truncate(k);
    }
    candidates.sort_by(order);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_models::tiny_models;

    #[test]
    fn best_first_is_the_head_of_a_full_sort_with_ties_in_position_order() {
        let scores = [0.5f32, 0.9, 0.5, -1.0, 0.9, 0.7, 0.5];
        assert_eq!(best_first((0..7).collect(), &scores, 3), vec![1, 4, 5]);
        assert_eq!(
            best_first((0..7).collect(), &scores, 5),
            vec![1, 4, 5, 0, 2],
            "the tie at the cut: 0 and 2 of 0, 2, 6"
        );
        assert_eq!(best_first((0..7).collect(), &scores, 99), vec![1, 4, 5, 0, 2, 6, 3]);
        assert_eq!(best_first(vec![6, 3, 2], &scores, 2), vec![2, 6], "candidates in any order");
        assert!(best_first((0..7).collect(), &scores, 0).is_empty());
        assert!(best_first(Vec::new(), &scores, 3).is_empty());
    }

    fn key(revision: i64) -> IndexKey {
        IndexKey { retriever: "tiny".into(), revision }
    }

    #[test]
    fn search_matches_brute_force_and_survives_a_round_trip() {
        let (retriever, ..) = tiny_models(DType::F32, 3);
        let texts = ["the cat sat", "a dog ran far", "cats and dogs", "sat on a mat", "far far away", "the end"];
        let passages: Vec<(i64, &str)> = texts.iter().enumerate().map(|(i, t)| (10 + i as i64, *t)).collect();
        let mut calls = Vec::new();
        let index = ExactIndex::build(key(1), &retriever, &passages, 4, &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!(calls, vec![(0, 6), (4, 6), (6, 6)]);
        let query = retriever.embed(&["the cat"], TextRole::Query, 1).unwrap();
        let hits = index.search(&query, 3).unwrap();
        // Brute force: every passage's cosine similarity, computed one by one.
        let q = query.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut expected: Vec<(i64, f32)> = passages
            .iter()
            .map(|(id, text)| {
                let e = retriever.embed(&[text], TextRole::Passage, 1).unwrap().flatten_all().unwrap();
                (*id, e.to_vec1::<f32>().unwrap().iter().zip(&q).map(|(a, b)| a * b).sum())
            })
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(
            hits.iter().map(|h| h.id).collect::<Vec<_>>(),
            expected[..3].iter().map(|e| e.0).collect::<Vec<_>>()
        );
        for (hit, (_, score)) in hits.iter().zip(&expected) {
            assert!((hit.score - score).abs() < 1e-4, "{} vs {score}", hit.score);
        }
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        index.save(&path).unwrap();
        let loaded = ExactIndex::load(&path, &key(1), &Device::Cpu).unwrap().expect("same key loads");
        assert_eq!(loaded.search(&query, 3).unwrap(), hits);
        // Another revision or retriever finds the saved index stale.
        assert!(ExactIndex::load(&path, &key(2), &Device::Cpu).unwrap().is_none());
        let other = IndexKey { retriever: "other".into(), revision: 1 };
        assert!(ExactIndex::load(&path, &other, &Device::Cpu).unwrap().is_none());
        assert!(ExactIndex::load(&dir.path().join("none"), &key(1), &Device::Cpu).unwrap().is_none());
        assert!(matches!(
            index.search(&Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(), 1),
            Err(IndexError::Dimensions { .. })
        ));
        assert_eq!(index.search(&query, 100).unwrap().len(), 6);
    }
}
