//! `attune bench device`: the model core and trainer on an accelerator — embeddings/s, seconds per
//! retriever and e2e optimiser step, and prefill/decode tokens/s with given model folders (random
//! weights allowed, so real shapes need no checkpoint). `scripts/gpu-check.sh` runs it beside the
//! PyTorch reference (`scripts/reference/bench_gpu.py`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::train::{StepTiming, bench_config, time_steps};
use crate::model::device::memory;
use crate::model::generator::Generator;
use crate::model::llama::KvCache;
use crate::model::random::WeightSource;
use crate::model::retriever::{Retriever, TextRole};
use crate::train::config::BaseModels;
use crate::train::step::TrainMode;

/// The parts `attune bench device` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// Retriever embeddings/s over passages of up to 128 tokens.
    Embed,
    /// One retriever-mode optimiser step (contrastive loss, LoRA, AdamW).
    RetrieverStep,
    /// One e2e optimiser step (contrastive + RAG-Sequence NLL over the top-k).
    E2eStep,
    /// Prefill and greedy decode tokens/s with a KV cache.
    Decode,
}

/// What `attune bench device` runs.
#[derive(Debug, Clone)]
pub struct DeviceBenchConfig {
    pub retriever: PathBuf,
    pub generator: PathBuf,
    pub weights: WeightSource,
    pub dtype: DType,
    pub parts: Vec<Part>,
    pub embed_texts: usize,
    pub embed_batch: usize,
    pub retriever_batch: usize,
    pub e2e_batch: usize,
    pub top_k: usize,
    /// Generator sequences in one graph in the e2e step.
    pub sequences_per_chunk: usize,
    /// Timed optimiser steps (after one warm-up step).
    pub steps: usize,
    pub new_tokens: usize,
}

impl Default for DeviceBenchConfig {
    fn default() -> Self {
        DeviceBenchConfig {
            retriever: PathBuf::new(),
            generator: PathBuf::new(),
            weights: WeightSource::Checkpoint,
            dtype: DType::BF16,
            parts: vec![Part::Embed, Part::RetrieverStep, Part::E2eStep, Part::Decode],
            embed_texts: 1024,
            embed_batch: 128,
            retriever_batch: 64,
            e2e_batch: 8,
            top_k: 4,
            sequences_per_chunk: 32,
            steps: 5,
            new_tokens: 128,
        }
    }
}

/// Figures of one `attune bench device` run (absent parts are `None`). One JSON object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceBench {
    pub device: String,
    pub dtype: String,
    pub embeddings_per_s: Option<f64>,
    pub retriever_step_s: Option<f64>,
    pub retriever_step_tokens: Option<f64>,
    pub e2e_step_s: Option<f64>,
    pub e2e_step_tokens: Option<f64>,
    pub prompt_tokens: Option<usize>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// Device memory in use after the run's parts (driver's view), MiB.
    pub memory_used_mib: Option<f64>,
    pub memory_total_mib: Option<f64>,
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the configured parts on `device`.
pub fn measure(config: &DeviceBenchConfig, device: &Device) -> anyhow::Result<DeviceBench> {
    let load_retriever = || -> anyhow::Result<Retriever> {
        let mut retriever = Retriever::load_with(&config.retriever, device, config.dtype, config.weights)?;
        retriever.set_max_length(128)?;
        Ok(retriever)
    };
    let load_generator = || -> anyhow::Result<Generator> {
        Ok(Generator::load_with(&config.generator, device, config.dtype, config.weights)?)
    };
    let mut out = DeviceBench {
        device: format!("{:?}", device.location()),
        dtype: format!("{:?}", config.dtype).to_lowercase(),
        ..DeviceBench::default()
    };
    for part in &config.parts {
        eprintln!("attune bench device: {part:?} ...");
        match part {
            Part::Embed => {
                let retriever = load_retriever()?;
                let texts = super::model::texts_of(config.embed_texts);
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                retriever.embed(&refs[..config.embed_batch.min(refs.len())], TextRole::Passage, config.embed_batch)?;
                device.synchronize()?;
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let start = Instant::now();
                    let embeddings = retriever.embed(&refs, TextRole::Passage, config.embed_batch)?;
                    embeddings.sum_all()?.to_scalar::<f32>()?;
                    best = best.min(start.elapsed().as_secs_f64());
                }
                out.embeddings_per_s = Some(texts.len() as f64 / best);
            }
            Part::RetrieverStep => {
                let train = bench_config(&config.retriever, &config.generator, TrainMode::Retriever, |h| {
                    (h.batch_size, h.max_steps) = (config.retriever_batch as u32, Some(config.steps as u32 + 1));
                })?;
                let models = BaseModels { retriever: Some(load_retriever()?), generator: None };
                let StepTiming { seconds, tokens, .. } =
                    time_steps(train, models, config.retriever_batch * (config.steps + 1))?;
                out.retriever_step_s = Some(seconds);
                out.retriever_step_tokens = Some(tokens);
            }
            Part::E2eStep => {
                let train = bench_config(&config.retriever, &config.generator, TrainMode::E2e, |h| {
                    (h.top_k, h.max_answer_tokens) = (config.top_k as u32, 32);
                    h.sequences_per_chunk = config.sequences_per_chunk as u32;
                    (h.batch_size, h.max_steps) = (config.e2e_batch as u32, Some(config.steps as u32 + 1));
                })?;
                let generator = load_generator()?;
                let models = BaseModels { retriever: Some(load_retriever()?), generator: Some(generator) };
                let StepTiming { seconds, tokens, .. } =
                    time_steps(train, models, config.e2e_batch * (config.steps + 1))?;
                out.e2e_step_s = Some(seconds);
                out.e2e_step_tokens = Some(tokens);
            }
            Part::Decode => {
                let generator = load_generator()?;
                let ids = generator.encode(&super::model::prompt())?;
                let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
                let model = generator.model();
                let prefill_once = || -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let logits = model.forward(&input, &mut KvCache::default(), None)?;
                    logits.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                    Ok(start.elapsed().as_secs_f64())
                };
                prefill_once()?;
                let prefill = (0..3).map(|_| prefill_once()).collect::<anyhow::Result<Vec<f64>>>()?;
                let prefill = prefill.into_iter().fold(f64::INFINITY, f64::min);
                let decode_once = || -> anyhow::Result<f64> {
                    // Greedy, never stopping early: exactly `new_tokens` steps after the prompt.
                    let mut cache = KvCache::default();
                    let mut logits = model.forward(&input, &mut cache, None)?;
                    let start = Instant::now();
                    for _ in 0..config.new_tokens {
                        let last = logits.get(0)?.get(logits.dim(1)? - 1)?;
                        let next = last.argmax(D::Minus1)?.to_scalar::<u32>()?;
                        logits = model.forward(&Tensor::new(&[next], device)?.unsqueeze(0)?, &mut cache, None)?;
                    }
                    logits.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                    Ok(start.elapsed().as_secs_f64())
                };
                decode_once()?;
                let decode = (0..2).map(|_| decode_once()).collect::<anyhow::Result<Vec<f64>>>()?;
                let decode = decode.into_iter().fold(f64::INFINITY, f64::min);
                out.prompt_tokens = Some(ids.len());
                out.prefill_tokens_per_s = Some(ids.len() as f64 / prefill);
                out.decode_tokens_per_s = Some(config.new_tokens as f64 / decode);
            }
        }
        if let Some((used, total)) = memory(device) {
            out.memory_used_mib = Some(out.memory_used_mib.unwrap_or(0.0).max(mib(used)));
            out.memory_total_mib = Some(mib(total));
        }
    }
    Ok(out)
}
