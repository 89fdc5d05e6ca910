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

/// A part of `attune bench train`: one kind of optimiser step, run in a process of its own so that
/// its peak resident size is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Retriever mode: batch 16, ~32-token questions, 128-token passages.
    Retriever,
    /// E2e mode: batch 8, top-k 4, 128-token passages, answers under 32 tokens.
    E2e,
    /// Generator mode: batch 8, each answer given its gold passage cut at 200 tokens (~240-token
    /// sequences).
    Generator,
    /// The generator part with activation checkpointing on both sides (transformers' gradient
    /// checkpointing for PyTorch).
    #[serde(rename = "generator-checkpointed")]
    GeneratorCheckpointed,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Retriever, Part::E2e, Part::Generator, Part::GeneratorCheckpointed];

    pub fn name(self) -> &'static str {
        match self {
            Part::Retriever => "retriever",
            Part::E2e => "e2e",
            Part::Generator => "generator",
            Part::GeneratorCheckpointed => "generator-checkpointed",
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Part> {
        Part::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| anyhow::anyhow!("unknown part {text:?} (retriever, e2e, generator, generator-checkpointed)"))
    }

    fn describe(self) -> String {
        match self {
            Part::Retriever => {
                format!("retriever (batch {RETRIEVER_BATCH}, ~32-token questions, {PASSAGE_TOKENS}-token passages)")
            }
            Part::E2e => format!("e2e (batch {E2E_BATCH}, top-k {E2E_TOP_K}, answers < {ANSWER_TOKENS} tokens)"),
            Part::Generator => format!("generator (batch {E2E_BATCH}, passages cut at {GENERATOR_PASSAGE_TOKENS})"),
            Part::GeneratorCheckpointed => format!("{}, checkpointed", Part::Generator.describe()),
        }
    }
}

/// Passage cut of the generator-mode part (sequences of about 240 tokens with the prompt).
pub const GENERATOR_PASSAGE_TOKENS: usize = 200;

/// One side's figures for one part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PartFigures {
    /// Median seconds per optimiser step, after a warm-up step.
    pub step_s: f64,
    /// Peak resident size of the part's process (models loaded, all steps run).
    pub peak_rss_bytes: u64,
    /// Attune only: resident size before the models were loaded ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_rss_before_bytes: Option<u64>,
    /// ... and after the run ended, its trainer and models dropped and the memory they freed handed
    /// back (`memory::release_freed`, as the server's job worker does after every job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_rss_after_bytes: Option<u64>,
    /// Attune only: tokens one step processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_step: Option<f64>,
}

/// A part's figures on both sides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartResult {
    pub part: Part,
    pub attune: PartFigures,
    pub pytorch: Option<PartFigures>,
    /// PyTorch seconds / Attune seconds (above 1: Attune is faster).
    pub speed_ratio: Option<f64>,
    /// Attune peak / PyTorch peak (below 1: Attune uses less).
    pub memory_ratio: Option<f64>,
}

impl PartResult {
    pub fn new(part: Part, attune: PartFigures, pytorch: Option<PartFigures>) -> PartResult {
        PartResult {
            part,
            attune,
            pytorch,
            speed_ratio: pytorch.map(|p| p.step_s / attune.step_s),
            memory_ratio: pytorch.map(|p| attune.peak_rss_bytes as f64 / p.peak_rss_bytes.max(1) as f64),
        }
    }
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

/// A timed optimiser step: seconds (median after the warm-up step), the tokens it processed, and
/// the resident size after the trainer (and the models it owned) was dropped and the memory handed
/// back.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    pub seconds: f64,
    pub tokens: f64,
    pub rss_after_bytes: Option<u64>,
    pub peak_rss_bytes: u64,
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
    drop(trainer);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(times.len() + 1 == steps, "the trainer ran {} steps", times.len() + 1);
    let peak_rss_bytes = crate::memory::resident().map_or(0, |r| r.peak_bytes);
    crate::memory::release_freed();
    let rss_after_bytes = crate::memory::resident().map(|r| r.now_bytes);
    Ok(StepTiming { seconds: median(times), tokens: median(tokens), rss_after_bytes, peak_rss_bytes })
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

/// Measures `part` on `device` with the default models: `steps` timed steps after a warm-up one.
pub fn measure_part(part: Part, steps: usize, models_dir: &Path, device: &Device) -> anyhow::Result<PartFigures> {
    let idle_rss_before_bytes = crate::memory::resident().map(|r| r.now_bytes);
    let retriever_path = models_dir.join("all-MiniLM-L6-v2");
    let generator_path = models_dir.join("SmolLM2-135M-Instruct");
    let max_steps = Some(steps as u32 + 1);
    let (config, models, examples) = match part {
        Part::Retriever => (
            bench_config(&retriever_path, &generator_path, TrainMode::Retriever, |h| {
                (h.batch_size, h.max_steps) = (RETRIEVER_BATCH as u32, max_steps);
            })?,
            BaseModels { retriever: Some(Retriever::load(&retriever_path, device)?), generator: None },
            RETRIEVER_BATCH,
        ),
        Part::E2e => (
            bench_config(&retriever_path, &generator_path, TrainMode::E2e, |h| {
                (h.top_k, h.max_answer_tokens) = (E2E_TOP_K as u32, ANSWER_TOKENS as u32);
                (h.batch_size, h.max_steps) = (E2E_BATCH as u32, max_steps);
            })?,
            BaseModels {
                retriever: Some(Retriever::load(&retriever_path, device)?),
                generator: Some(Generator::load(&generator_path, device)?),
            },
            E2E_BATCH,
        ),
        Part::Generator | Part::GeneratorCheckpointed => (
            bench_config(&retriever_path, &generator_path, TrainMode::Generator, |h| {
                (h.max_passage_tokens, h.max_answer_tokens) = (GENERATOR_PASSAGE_TOKENS as u32, ANSWER_TOKENS as u32);
                (h.batch_size, h.max_steps) = (E2E_BATCH as u32, max_steps);
                h.activation_checkpointing = part == Part::GeneratorCheckpointed;
            })?,
            BaseModels { retriever: None, generator: Some(Generator::load(&generator_path, device)?) },
            E2E_BATCH,
        ),
    };
    let timing = time_steps(config, models, examples * (steps + 1))?;
    // The peak as the kernel recorded it before the memory went back (it may lower it after).
    let peak_rss_bytes = timing.peak_rss_bytes;
    Ok(PartFigures {
        step_s: timing.seconds,
        peak_rss_bytes,
        idle_rss_before_bytes,
        idle_rss_after_bytes: timing.rss_after_bytes,
        tokens_per_step: Some(timing.tokens),
    })
}

/// Runs the PyTorch reference script for `part` and reads its JSON line.
pub fn measure_reference(
    python: &Path,
    script: &Path,
    models_dir: &Path,
    part: Part,
    steps: usize,
) -> anyhow::Result<PartFigures> {
    let steps = steps.to_string();
    super::model::run_reference(python, script, models_dir, &["--part", part.name(), "--steps", &steps])
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The table `attune bench train` prints.
pub fn report(results: &[PartResult]) -> String {
    let mut out = format!(
        "{:<62} {:>9} {:>9} {:>8}\n",
        "seconds per optimiser step (this machine)", "attune", "pytorch", "ratio"
    );
    let cell = |value: Option<f64>, digits: usize| value.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for r in results {
        out.push_str(&format!(
            "{:<62} {:>9.2} {:>9} {:>8}\n",
            r.part.describe(),
            r.attune.step_s,
            cell(r.pytorch.map(|p| p.step_s), 2),
            cell(r.speed_ratio, 2) + if r.speed_ratio.is_some() { "x" } else { "" },
        ));
    }
    out.push_str(&format!("\n{:<62} {:>9} {:>9} {:>8}\n", "peak resident GiB", "attune", "pytorch", "ratio"));
    for r in results {
        out.push_str(&format!(
            "{:<62} {:>9.2} {:>9} {:>8}\n",
            r.part.describe(),
            gib(r.attune.peak_rss_bytes),
            cell(r.pytorch.map(|p| gib(p.peak_rss_bytes)), 2),
            cell(r.memory_ratio, 2) + if r.memory_ratio.is_some() { "x" } else { "" },
        ));
    }
    out.push_str(&format!(
        "\n{:<62} {:>9} {:>9}\n",
        "attune's idle resident GiB (before loading, after the run)", "before", "after"
    ));
    for r in results {
        out.push_str(&format!(
            "{:<62} {:>9} {:>9}\n",
            r.part.describe(),
            cell(r.attune.idle_rss_before_bytes.map(gib), 2),
            cell(r.attune.idle_rss_after_bytes.map(gib), 2),
        ));
    }
    out.push_str(
        "speed ratio = pytorch seconds / attune seconds (above 1: attune is faster); memory ratio = attune / pytorch.\n\
         f32 on CPU, LoRA r 8, AdamW; median of the timed steps after a warm-up step; one process per part and side.\n",
    );
    out
}
