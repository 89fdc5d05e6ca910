//! A run's folder: the names of everything in it (`config.json`, `log.jsonl`, `triples.jsonl`,
//! `checkpoints/step-N/`, the adapters `retriever/` and `generator/`, `evals.json` and `best/`), the
//! settings written and read back, the step log appended and truncated, and checkpoints written
//! whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

use attune_shared::StepPoint;
use serde::{Deserialize, Serialize};

use super::config::{Part, TrainConfig};
use super::error::{Result, TrainError};

/// The run's settings.
pub const CONFIG_FILE: &str = "config.json";
/// One line of figures per optimiser step.
pub const LOG_FILE: &str = "log.jsonl";
/// The frozen triples a job's run trains on.
pub const TRIPLES_FILE: &str = "triples.jsonl";
/// Checkpoints, one folder per step.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// A checkpoint's bookkeeping.
pub const STATE_FILE: &str = "state.json";
/// A checkpoint's optimiser moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Mined hard negatives, reused by a resumed run.
pub const NEGATIVES_FILE: &str = "hard_negatives.json";
/// The held-out evaluations so far, `[step, loss]` each: early stopping counts from them.
pub const EVALS_FILE: &str = "evals.json";
/// The adapters of the best held-out evaluation, with early stopping on.
pub const BEST_DIR: &str = "best";
/// The step `best/` is of (not a checkpoint's `state.json`: it cannot be resumed from).
pub const BEST_STEP_FILE: &str = "step.json";
pub const RETRIEVER_DIR: &str = "retriever";
pub const GENERATOR_DIR: &str = "generator";

impl Part {
    /// The folder of this model's adapter inside a run or checkpoint folder.
    pub fn dir_name(self) -> &'static str {
        match self {
            Part::Retriever => RETRIEVER_DIR,
            Part::Generator => GENERATOR_DIR,
        }
    }
}

/// A checkpoint's bookkeeping (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    /// Data order and dropout are derived from the seed and the step, so they need no saved state.
    pub seed: u64,
    pub rng: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |error| TrainError::Io { path: path.to_owned(), error }
}

/// The latest checkpoint under a run folder, or `dir` itself when it is a checkpoint.
pub fn latest_checkpoint(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_owned());
    }
    let none = || TrainError::Checkpoint { path: dir.to_owned(), message: "no checkpoints in this run".into() };
    checkpoints(dir).pop().ok_or_else(none)
}

/// The complete checkpoints of a run folder, oldest first.
pub fn checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(run_dir.join(CHECKPOINTS_DIR))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
                .filter(|p| p.join(STATE_FILE).is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// `checkpoint`, then the run's older checkpoints, newest first: what a resume tries in turn
/// when a newer one does not load (a file torn by a power loss).
pub fn resume_candidates(checkpoint: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![checkpoint.to_owned()];
    if let Some(run) = checkpoint.parent().and_then(Path::parent) {
        candidates.extend(checkpoints(run).into_iter().rev().filter(|c| c.as_path() < checkpoint));
    }
    candidates
}

/// Deletes all but the newest `keep` checkpoints of a run folder.
pub fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<()> {
    let all = checkpoints(run_dir);
    for old in &all[..all.len().saturating_sub(keep.max(1))] {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(())
}

/// Flushes a folder's files and the folder itself to the disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// The run folder `dir` names: itself when it holds a `config.json`, else the run a checkpoint
/// folder belongs to.
pub fn run_folder_of(dir: &Path) -> Option<PathBuf> {
    if dir.join(CONFIG_FILE).is_file() {
        return Some(dir.to_owned());
    }
    let run = dir.parent()?.parent()?;
    run.join(CONFIG_FILE).is_file().then(|| run.to_owned())
}

/// Reads a run's `config.json` (also one written before the settings became `Hyper`, so a run
/// started by an older Attune still resumes).
pub fn read_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    match serde_json::from_str(&text) {
        Ok(config) => Ok(config),
        Err(e) => match serde_json::from_str::<legacy::Config>(&text) {
            Ok(old) => Ok(old.into()),
            Err(_) => Err(TrainError::Checkpoint { path, message: e.to_string() }),
        },
    }
}

/// `config.json` as the first releases wrote it: every setting at the top level or in `loss`.
mod legacy {
    use std::path::PathBuf;

    use attune_shared::{Decay, Hyper, Marginalization, TrainMode};
    use serde::Deserialize;

    use crate::train::config::TrainConfig;
    use crate::train::data::{CsvColumns, SplitOptions};
    use crate::train::loss::Contrastive;
    use crate::train::optim::AdamWConfig;

    #[derive(Deserialize)]
    struct Loss {
        mode: TrainMode,
        contrastive: Contrastive,
        top_k: u32,
        generator_weight: f64,
        marginalization: Marginalization,
        max_passage_tokens: u32,
        max_answer_tokens: u32,
        #[serde(default)]
        sequences_per_chunk: Option<u32>,
    }

    #[derive(Deserialize)]
    pub struct Config {
        data: PathBuf,
        #[serde(default)]
        columns: CsvColumns,
        #[serde(default)]
        split: SplitOptions,
        #[serde(default)]
        max_train_examples: Option<u32>,
        retriever: PathBuf,
        generator: PathBuf,
        device: String,
        #[serde(default)]
        dtype: Option<String>,
        loss: Loss,
        epochs: u32,
        max_steps: Option<u32>,
        batch_size: u32,
        grad_accum: u32,
        lr: f64,
        warmup_ratio: f64,
        decay: Decay,
        optimizer: AdamWConfig,
        max_grad_norm: f64,
        lora_r: u32,
        lora_alpha: f64,
        lora_dropout: f32,
        retriever_targets: Vec<String>,
        generator_targets: Vec<String>,
        hard_negatives: u32,
        seed: u64,
        checkpoint_every: u32,
        #[serde(default)]
        eval_every: u32,
    }

    impl From<Config> for TrainConfig {
        fn from(old: Config) -> Self {
            let loss = old.loss;
            let defaults = Hyper::default();
            let hyper = Hyper {
                // Epoch 0 meant "max_steps alone"; the schedule then spans max_steps either way.
                epochs: old.epochs.max(1),
                max_steps: old.max_steps,
                // Those runs had neither.
                min_steps: 0,
                early_stopping_patience: 0,
                batch_size: old.batch_size,
                grad_accum: old.grad_accum,
                lr: old.lr,
                warmup_ratio: old.warmup_ratio,
                weight_decay: old.optimizer.weight_decay,
                max_grad_norm: old.max_grad_norm,
                lora_r: old.lora_r,
                lora_alpha: old.lora_alpha,
                lora_dropout: old.lora_dropout,
                top_k: loss.top_k,
                generator_weight: loss.generator_weight,
                scale: loss.contrastive.scale,
                max_passage_tokens: loss.max_passage_tokens,
                max_answer_tokens: loss.max_answer_tokens,
                test_fraction: old.split.test_fraction,
                seed: old.seed,
                checkpoint_every: old.checkpoint_every,
                eval_every: old.eval_every,
                decay: old.decay,
                marginalization: loss.marginalization,
                symmetric: loss.contrastive.symmetric,
                hard_negatives: old.hard_negatives,
                max_train_examples: old.max_train_examples,
                sequences_per_chunk: loss.sequences_per_chunk.unwrap_or(defaults.sequences_per_chunk),
                retriever_targets: old.retriever_targets,
                generator_targets: old.generator_targets,
                keep_checkpoints: defaults.keep_checkpoints,
                activation_checkpointing: defaults.activation_checkpointing,
                // As such a run mined its negatives: once, with no margin.
                hard_negative_margin: 0.0,
                refresh_negatives_every: 0,
                mining_retrieval: attune_shared::RetrievalMethod::Dense,
                candidates: attune_shared::Candidates::Batch,
                retriever_loss: attune_shared::RetrieverLoss::Contrastive,
                lsr_temperature: defaults.lsr_temperature,
                oracle_fraction: 1.0,
                distractors: 0,
                cloze_pairs: 0,
            };
            TrainConfig {
                data: old.data,
                columns: old.columns,
                retriever: old.retriever,
                generator: old.generator,
                device: old.device,
                dtype: old.dtype.unwrap_or_else(|| "auto".into()),
                corpus: None,
                mode: loss.mode,
                hyper,
            }
        }
    }
}

/// Starts a run's folder: `config.json` and an empty log.
pub fn start_run_folder(run_dir: &Path, config: &TrainConfig) -> Result<()> {
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let json = serde_json::to_string_pretty(config).expect("config serializes");
    let path = run_dir.join(CONFIG_FILE);
    std::fs::write(&path, json).map_err(io(&path))?;
    let log = run_dir.join(LOG_FILE);
    std::fs::write(&log, "").map_err(io(&log))
}

/// Appends one step's figures to the run's log.
pub fn append_log(run_dir: &Path, point: &StepPoint) -> Result<()> {
    let path = run_dir.join(LOG_FILE);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
    writeln!(file, "{}", serde_json::to_string(point).expect("a step serializes")).map_err(io(&path))
}

/// Keeps only the log's steps up to `step` (a resumed run redoes the ones after its checkpoint).
pub fn truncate_log(run_dir: &Path, step: usize) -> Result<()> {
    let log = run_dir.join(LOG_FILE);
    let Ok(text) = std::fs::read_to_string(&log) else { return Ok(()) };
    let kept: Vec<&str> =
        text.lines().filter(|l| serde_json::from_str::<StepPoint>(l).is_ok_and(|p| p.step as usize <= step)).collect();
    let mut joined = kept.join("\n");
    if !joined.is_empty() {
        joined.push('\n');
    }
    std::fs::write(&log, joined).map_err(io(&log))
}

/// Writes `checkpoints/step-NNNNNN/`: what `contents` puts in it, then `state.json`. Written to a
/// temporary folder and renamed, so a crash mid-write never leaves a half checkpoint that looks
/// whole.
pub fn write_checkpoint(
    run_dir: &Path,
    state: &CheckpointState,
    contents: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let dir = root.join(format!("step-{:06}", state.step));
    let partial = root.join(format!(".partial-step-{:06}", state.step));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    contents(&partial)?;
    let state_path = partial.join(STATE_FILE);
    std::fs::write(&state_path, serde_json::to_string_pretty(state).expect("state serializes"))
        .map_err(io(&state_path))?;
    // Everything on the disk before the rename makes it a checkpoint, and the rename itself after.
    sync_tree(&partial)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&partial, &dir).map_err(io(&dir))?;
    sync_dir(&root)?;
    Ok(dir)
}

/// The held-out evaluations recorded in the run folder; none when the file is missing or unreadable
/// (a resumed run then counts afresh).
pub fn read_evals(run_dir: &Path) -> Vec<(usize, f64)> {
    std::fs::read_to_string(run_dir.join(EVALS_FILE))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Replaces the run's evaluation record (a temporary file renamed into place).
pub fn write_evals(run_dir: &Path, evals: &[(usize, f64)]) -> Result<()> {
    let path = run_dir.join(EVALS_FILE);
    let partial = run_dir.join(format!(".partial-{EVALS_FILE}"));
    std::fs::write(&partial, serde_json::to_string(evals).expect("evaluations serialize")).map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))
}

/// Replaces `best/` with what `contents` writes and the `step` it is of, through
/// a temporary folder renamed into place.
pub fn write_best(run_dir: &Path, step: usize, contents: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = run_dir.join(BEST_DIR);
    let partial = run_dir.join(format!(".partial-{BEST_DIR}"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    contents(&partial)?;
    let marker = partial.join(BEST_STEP_FILE);
    std::fs::write(&marker, serde_json::json!({ "step": step }).to_string()).map_err(io(&marker))?;
    sync_tree(&partial)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&partial, &dir).map_err(io(&dir))?;
    Ok(dir)
}

/// The step whose adapters `best/` holds, if it holds any.
pub fn best_step(run_dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(run_dir.join(BEST_DIR).join(BEST_STEP_FILE)).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["step"].as_u64().map(|s| s as usize)
}

/// Copies the adapter folders `parts` (their files) from `from` into `to`.
pub fn copy_adapters(from: &Path, to: &Path, parts: &[&str]) -> Result<()> {
    for part in parts {
        let (source, target) = (from.join(part), to.join(part));
        std::fs::create_dir_all(&target).map_err(io(&target))?;
        for entry in std::fs::read_dir(&source).map_err(io(&source))? {
            let path = entry.map_err(io(&source))?.path();
            if path.is_file() {
                let copy = target.join(path.file_name().expect("a file has a name"));
                std::fs::copy(&path, &copy).map_err(io(&copy))?;
            }
        }
    }
    Ok(())
}

/// Removes what an earlier run in the same folder left of its evaluations.
pub fn clear_evals(run_dir: &Path) -> Result<()> {
    let (evals, best) = (run_dir.join(EVALS_FILE), run_dir.join(BEST_DIR));
    if evals.exists() {
        std::fs::remove_file(&evals).map_err(io(&evals))?;
    }
    if best.exists() {
        std::fs::remove_dir_all(&best).map_err(io(&best))?;
    }
    Ok(())
}

/// A checkpoint's state, refused when it was written by a run with another seed.
pub fn read_state(checkpoint: &Path, seed: u64) -> Result<CheckpointState> {
    let bad = |message: String| TrainError::Checkpoint { path: checkpoint.to_owned(), message };
    let text = std::fs::read_to_string(checkpoint.join(STATE_FILE)).map_err(|e| bad(e.to_string()))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if state.seed != seed {
        return Err(bad(format!("written with seed {}, this run has seed {seed}", state.seed)));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `config.json` in the first releases' layout (as `attune train` wrote it) reads as today's.
    #[test]
    fn a_config_of_the_first_releases_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "data": "triples.csv", "columns": {"passage": "Abstract", "question": "Question", "answer": "Answer"},
            "split": {"test_fraction": 0.25, "seed": 3}, "max_train_examples": null,
            "retriever": "models/r", "generator": "models/g", "device": "cpu", "dtype": "auto",
            "loss": {"mode": "retriever", "contrastive": {"scale": 10.0, "symmetric": true}, "top_k": 3,
                     "generator_weight": 0.5, "marginalization": "token", "max_passage_tokens": 64,
                     "max_answer_tokens": 16, "sequences_per_chunk": 4},
            "epochs": 2, "max_steps": 7, "batch_size": 4, "grad_accum": 1, "lr": 0.0003, "warmup_ratio": 0.1,
            "decay": "cosine", "optimizer": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.02},
            "max_grad_norm": 1.0, "lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.05,
            "retriever_targets": ["query"], "generator_targets": ["q_proj"], "hard_negatives": 0, "seed": 3,
            "checkpoint_every": 2, "eval_every": 0
        });
        std::fs::write(dir.path().join(CONFIG_FILE), old.to_string()).unwrap();
        let config = read_config(dir.path()).unwrap();
        assert_eq!(config.mode, attune_shared::TrainMode::Retriever);
        let h = &config.hyper;
        assert_eq!(
            (h.test_fraction, h.seed, h.max_steps, h.top_k, h.scale, h.symmetric),
            (0.25, 3, Some(7), 3, 10.0, true)
        );
        assert_eq!(
            (h.decay, h.marginalization, h.weight_decay),
            (attune_shared::Decay::Cosine, attune_shared::Marginalization::Token, 0.02)
        );
        assert_eq!(h.retriever_targets, ["query"]);
        config.validate().unwrap();
        // Something else entirely is still refused.
        std::fs::write(dir.path().join(CONFIG_FILE), "{\"data\": 1}").unwrap();
        assert!(read_config(dir.path()).is_err());
    }

    #[test]
    fn checkpoints_are_found_newest_first_and_truncate_the_log() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest_checkpoint(dir.path()).is_err());
        for step in [2, 10, 4] {
            let state = CheckpointState { step, seed: 1, rng: String::new() };
            write_checkpoint(dir.path(), &state, |_| Ok(())).unwrap();
        }
        let latest = latest_checkpoint(dir.path()).unwrap();
        assert!(latest.ends_with("step-000010"), "{}", latest.display());
        assert_eq!(read_state(&latest, 1).unwrap().step, 10);
        assert!(read_state(&latest, 2).unwrap_err().to_string().contains("seed"));
        // A failed write leaves no checkpoint that looks whole.
        let state = CheckpointState { step: 12, seed: 1, rng: String::new() };
        let failed = write_checkpoint(dir.path(), &state, |_| Err(TrainError::Data("disk full".into())));
        assert!(failed.is_err());
        assert!(latest_checkpoint(dir.path()).unwrap().ends_with("step-000010"));

        for step in 1..=5 {
            append_log(dir.path(), &StepPoint { step, ..StepPoint::default() }).unwrap();
        }
        truncate_log(dir.path(), 3).unwrap();
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 3);
    }
}
