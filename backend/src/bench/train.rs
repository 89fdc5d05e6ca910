//! `attune bench train`: seconds per optimiser step of the trainer on this machine, retriever mode
//! (batch 16, ~32-token questions, 128-token passages) and e2e mode (batch 8, top-k 4, answers under
//! 32 tokens), beside the same step done by PyTorch (`scripts/reference/bench_train.py`), as ratios.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::model::generator::Generator;
use crate::model::retriever::Retriever;
use crate::train::config::{BaseModels, RunInputs, TrainConfig};
use crate::train::data::Triple;
use crate::train::trainer::{RunSetup, TrainEvent, Trainer};
use attune_shared::{Hyper, TrainMode};

pub const RETRIEVER_BATCH: usize = 16;
pub const E2E_BATCH: usize = 8;
pub const E2E_TOP_K: usize = 4;
pub const PASSAGE_TOKENS: usize = 128;
pub const ANSWER_TOKENS: usize = 32;

/// Seconds per optimiser step (median of the measured steps, after a warm-up step).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimes {
    pub retriever_step_s: f64,
    pub e2e_step_s: f64,
}

/// The workload both sides run (must equal the reference script's): distinct passages long enough
/// to be cut at 128 tokens, questions of about 32 tokens, short answers.
pub fn workload(count: usize) -> Vec<Triple> {
    (0..count)
        .map(|i| Triple {
            question: format!("question {i}: {}?", "what did the quick brown fox jump over ".repeat(3).trim()),
            passage: format!(
                "passage {i}: {}",
                "the quick brown fox jumps over the lazy dog near the river bank. ".repeat(12)
            ),
            answer: format!("the lazy dog number {i}"),
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A timed optimiser step: seconds (median after the warm-up step) and the tokens it processed.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    pub seconds: f64,
    pub tokens: f64,
}

/// Runs the trainer for `config.max_steps` steps on the benchmark workload and times them.
pub fn time_steps(config: TrainConfig, models: BaseModels, examples: usize) -> anyhow::Result<StepTiming> {
    let dir = tempfile_dir()?;
    let steps = config.hyper.max_steps.unwrap_or(1) as usize;
    let setup = RunSetup {
        config,
        out: dir.clone(),
        models,
        train: workload(examples),
        held_out: Vec::new(),
        corpus: Vec::new(),
        resume: None,
    };
    let mut trainer = Trainer::new(setup)?;
    let (mut times, mut tokens) = (Vec::new(), Vec::new());
    trainer.run(&mut |event| {
        if let TrainEvent::Step(report) = event
            && report.step > 1
        {
            times.push(report.step_seconds);
            tokens.push(report.tokens_per_second * report.step_seconds);
        }
        ControlFlow::Continue(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(times.len() + 1 == steps, "the trainer ran {} steps", times.len() + 1);
    Ok(StepTiming { seconds: median(times), tokens: median(tokens) })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("attune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A benchmark run's settings: `Hyper::default()` with 128-token passages, no checkpoints inside
/// the timed steps (dropout as in training), changed by `change`.
pub fn bench_config(
    retriever: &Path,
    generator: &Path,
    mode: TrainMode,
    change: impl FnOnce(&mut Hyper),
) -> anyhow::Result<TrainConfig> {
    let mut hyper = Hyper {
        lr: 1e-4,
        max_passage_tokens: PASSAGE_TOKENS as u32,
        checkpoint_every: 0,
        eval_every: 0,
        ..Hyper::default()
    };
    change(&mut hyper);
    let inputs = RunInputs {
        retriever: retriever.to_owned(),
        generator: generator.to_owned(),
        ..RunInputs::new(PathBuf::new(), Path::new(""))
    };
    Ok(TrainConfig::from_hyper(&hyper, mode, inputs)?)
}

/// Measures the trainer's steps on `device` with the default models.
pub fn measure(models_dir: &Path, device: &Device) -> anyhow::Result<StepTimes> {
    let retriever_path = models_dir.join("all-MiniLM-L6-v2");
    let generator_path = models_dir.join("SmolLM2-135M-Instruct");
    let retriever_config = bench_config(&retriever_path, &generator_path, TrainMode::Retriever, |h| {
        (h.batch_size, h.max_steps) = (RETRIEVER_BATCH as u32, Some(6));
    })?;
    let models = BaseModels { retriever: Some(Retriever::load(&retriever_path, device)?), generator: None };
    let retriever_step_s = time_steps(retriever_config, models, RETRIEVER_BATCH * 6)?.seconds;
    let e2e_config = bench_config(&retriever_path, &generator_path, TrainMode::E2e, |h| {
        (h.top_k, h.max_answer_tokens) = (E2E_TOP_K as u32, ANSWER_TOKENS as u32);
        (h.batch_size, h.max_steps) = (E2E_BATCH as u32, Some(3));
    })?;
    let models = BaseModels {
        retriever: Some(Retriever::load(&retriever_path, device)?),
        generator: Some(Generator::load(&generator_path, device)?),
    };
    let e2e_step_s = time_steps(e2e_config, models, E2E_BATCH * 3)?.seconds;
    Ok(StepTimes { retriever_step_s, e2e_step_s })
}

/// Runs the PyTorch reference script and reads its JSON line.
pub fn measure_reference(python: &Path, script: &Path, models_dir: &Path) -> anyhow::Result<StepTimes> {
    super::model::run_reference(python, script, models_dir)
}

/// The table `attune bench train` prints.
pub fn report(ours: &StepTimes, reference: Option<&StepTimes>) -> String {
    let mut out = format!(
        "{:<58} {:>9} {:>9} {:>8}\n",
        "seconds per optimiser step (this machine)", "attune", "pytorch", "ratio"
    );
    let rows = [
        (
            format!("retriever mode (batch {RETRIEVER_BATCH}, ~32-token questions, {PASSAGE_TOKENS}-token passages)"),
            ours.retriever_step_s,
            reference.map(|r| r.retriever_step_s),
        ),
        (
            format!("e2e mode (batch {E2E_BATCH}, top-k {E2E_TOP_K}, answers < {ANSWER_TOKENS} tokens)"),
            ours.e2e_step_s,
            reference.map(|r| r.e2e_step_s),
        ),
    ];
    for (name, attune, torch) in rows {
        match torch {
            Some(torch) => out.push_str(&format!("{name:<58} {attune:>9.2} {torch:>9.2} {:>7.2}x\n", torch / attune)),
            None => out.push_str(&format!("{name:<58} {attune:>9.2} {:>9} {:>8}\n", "-", "-")),
        }
    }
    out.push_str(
        "ratio = pytorch seconds / attune seconds (above 1: attune is faster). f32 on CPU, LoRA r 8, AdamW.\n",
    );
    out
}
