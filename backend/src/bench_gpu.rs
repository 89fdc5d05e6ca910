//! `attune bench device` and `attune bench agree`: the model core and trainer on an accelerator.
//! `device` measures embeddings/s, seconds per retriever and e2e optimiser step, and prefill/decode
//! tokens/s with given model folders (random weights allowed, so real shapes need no checkpoint);
//! `agree` checks that a device computes what the CPU computes on the same seeded weights —
//! embeddings, logits, the e2e loss and every LoRA gradient. `scripts/gpu-check.sh` runs both beside
//! the PyTorch reference (`scripts/reference/bench_gpu.py`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::bench_train::{StepTiming, time_steps, workload};
use crate::model::device::memory;
use crate::model::generator::Generator;
use crate::model::layers::Mode;
use crate::model::llama::KvCache;
use crate::model::lora::{self, LoraConfig};
use crate::model::random::{RandomWeights, WeightSource};
use crate::model::retriever::{Retriever, TextRole};
use crate::train::step::{LossConfig, Models, TrainMode, batch_gradients};
use crate::train::trainer::{BaseModels, TrainConfig};

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
    let base = TrainConfig {
        retriever: config.retriever.clone(),
        generator: config.generator.clone(),
        epochs: 0,
        lr: 1e-4,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    for part in &config.parts {
        eprintln!("attune bench device: {part:?} ...");
        match part {
            Part::Embed => {
                let retriever = load_retriever()?;
                let texts = crate::bench::texts_of(config.embed_texts);
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
                let train = TrainConfig {
                    loss: LossConfig { mode: TrainMode::Retriever, max_passage_tokens: 128, ..LossConfig::default() },
                    batch_size: config.retriever_batch,
                    max_steps: Some(config.steps + 1),
                    ..base.clone()
                };
                let models = BaseModels { retriever: Some(load_retriever()?), generator: None };
                let StepTiming { seconds, tokens } =
                    time_steps(train, models, config.retriever_batch * (config.steps + 1))?;
                out.retriever_step_s = Some(seconds);
                out.retriever_step_tokens = Some(tokens);
            }
            Part::E2eStep => {
                let train = TrainConfig {
                    loss: LossConfig {
                        mode: TrainMode::E2e,
                        top_k: config.top_k,
                        max_passage_tokens: 128,
                        max_answer_tokens: 32,
                        sequences_per_chunk: config.sequences_per_chunk,
                        ..LossConfig::default()
                    },
                    batch_size: config.e2e_batch,
                    max_steps: Some(config.steps + 1),
                    ..base.clone()
                };
                let generator = load_generator()?;
                let models = BaseModels { retriever: Some(load_retriever()?), generator: Some(generator) };
                let StepTiming { seconds, tokens } = time_steps(train, models, config.e2e_batch * (config.steps + 1))?;
                out.e2e_step_s = Some(seconds);
                out.e2e_step_tokens = Some(tokens);
            }
            Part::Decode => {
                let generator = load_generator()?;
                let ids = generator.encode(&crate::bench::prompt())?;
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

/// One comparison of `attune bench agree`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    pub what: String,
    /// ‖device − cpu‖ / ‖cpu‖ over all elements.
    pub relative_error: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// The same tiny model pair, seeded alike, with LoRA adapters whose values are seeded too.
struct Pair {
    retriever: Retriever,
    generator: Generator,
    retriever_vars: VarMap,
    generator_vars: VarMap,
}

fn seeded_pair(
    retriever_dir: &std::path::Path,
    generator_dir: &std::path::Path,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> anyhow::Result<Pair> {
    let source = WeightSource::Random { seed };
    let mut retriever = Retriever::load_with(retriever_dir, device, dtype, source)?;
    let mut generator = Generator::load_with(generator_dir, device, dtype, source)?;
    let retriever_vars = VarMap::new();
    lora::attach(
        retriever.model_mut(),
        &LoraConfig::new(4, 8.0, 0.0, &["query", "key", "value"]),
        VarBuilder::from_varmap(&retriever_vars, DType::F32, device),
    )?;
    let generator_vars = VarMap::new();
    lora::attach(
        generator.model_mut(),
        &LoraConfig::new(4, 8.0, 0.0, &["q_proj", "k_proj", "v_proj", "o_proj"]),
        VarBuilder::from_varmap(&generator_vars, DType::F32, device),
    )?;
    // Non-zero lora_B too, so every adapter matrix gets a gradient worth comparing.
    let values = RandomWeights::new(seed.wrapping_add(1));
    for varmap in [&retriever_vars, &generator_vars] {
        for (name, var) in sorted_vars(varmap) {
            let scaled = (values.tensor(&name, var.shape())? * 10.0)?;
            var.set(&scaled.to_device(device)?)?;
        }
    }
    Ok(Pair { retriever, generator, retriever_vars, generator_vars })
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn relative_error(device: &Tensor, cpu: &Tensor) -> anyhow::Result<f64> {
    let device = device.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?;
    let cpu = cpu.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (&device - &cpu)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = cpu.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(diff / norm.max(1e-30))
}

/// Everything one pair computes for the agreement check.
struct Outputs {
    embeddings: Tensor,
    logits: Tensor,
    loss: f64,
    grads: Vec<(String, Tensor)>,
}

fn outputs(pair: &Pair, device: &Device) -> anyhow::Result<Outputs> {
    let triples = workload(6);
    let texts: Vec<&str> = triples.iter().map(|t| t.passage.as_str()).collect();
    let embeddings = pair.retriever.embed(&texts, TextRole::Passage, 4)?;
    let ids = pair.generator.encode(&crate::bench::prompt())?;
    let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
    let logits = pair.generator.model().forward(&input, &mut KvCache::default(), None)?.to_dtype(DType::F32)?;
    let mut names = Vec::new();
    let mut params = Vec::new();
    for varmap in [&pair.retriever_vars, &pair.generator_vars] {
        for (name, var) in sorted_vars(varmap) {
            names.push(name);
            params.push(var);
        }
    }
    let config = LossConfig { mode: TrainMode::E2e, top_k: 3, sequences_per_chunk: 6, ..LossConfig::default() };
    let models = Models { retriever: Some(&pair.retriever), generator: Some(&pair.generator) };
    let out = batch_gradients(models, &triples, &[], &config, Mode::Inference, 1.0, &params)?;
    let grads = names
        .into_iter()
        .zip(out.grads)
        .map(|(name, g)| g.map(|g| (name.clone(), g)).ok_or_else(|| anyhow::anyhow!("{name} got no gradient")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Outputs { embeddings, logits, loss: out.loss, grads })
}

/// Compares `device` with the CPU on tiny models built from the folders' configs with seeded
/// weights: in f32 (tight tolerances) and, on an accelerator, in bf16 (loose ones).
pub fn agree(
    retriever_dir: &std::path::Path,
    generator_dir: &std::path::Path,
    device: &Device,
) -> anyhow::Result<Vec<Agreement>> {
    let seed = 17;
    let cpu = outputs(&seeded_pair(retriever_dir, generator_dir, &Device::Cpu, DType::F32, seed)?, &Device::Cpu)?;
    let mut rows = Vec::new();
    // bf16 keeps 8 bits of mantissa: errors of a few 1e-3 per op add up over layers.
    let dtypes: &[(DType, f64, f64)] = &[(DType::F32, 1e-4, 1e-3), (DType::BF16, 3e-2, 5e-2)];
    for &(dtype, forward_tolerance, gradient_tolerance) in dtypes {
        let ours = outputs(&seeded_pair(retriever_dir, generator_dir, device, dtype, seed)?, device)?;
        let label = format!("{dtype:?}").to_lowercase();
        rows.extend(compare(&label, &ours, &cpu, forward_tolerance, gradient_tolerance)?);
    }
    Ok(rows)
}

/// The rows comparing `ours` with the CPU's `cpu`.
fn compare(
    label: &str,
    ours: &Outputs,
    cpu: &Outputs,
    forward_tolerance: f64,
    gradient_tolerance: f64,
) -> anyhow::Result<Vec<Agreement>> {
    let mut rows = Vec::new();
    let mut push = |what: String, error: f64, tolerance: f64| {
        rows.push(Agreement { what, relative_error: error, tolerance, pass: error <= tolerance });
    };
    push(
        format!("{label}: retriever embeddings"),
        relative_error(&ours.embeddings, &cpu.embeddings)?,
        forward_tolerance,
    );
    push(format!("{label}: generator logits"), relative_error(&ours.logits, &cpu.logits)?, forward_tolerance);
    push(
        format!("{label}: e2e loss (contrastive + RAG-Sequence)"),
        (ours.loss - cpu.loss).abs() / cpu.loss.abs().max(1e-30),
        forward_tolerance,
    );
    // All adapters' gradients as one vector; the worst single tensor is named in the label.
    let (mut diff, mut norm, mut worst) = (0.0f64, 0.0f64, (String::new(), 0.0f64));
    for ((name, g), (_, reference)) in ours.grads.iter().zip(&cpu.grads) {
        let error = relative_error(g, reference)?;
        let reference_norm = reference.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        diff += error.powi(2) * reference_norm;
        norm += reference_norm;
        if error >= worst.1 {
            worst = (name.rsplit_once(".lora_").map_or(name.as_str(), |(layer, _)| layer).to_owned(), error);
        }
    }
    push(
        format!("{label}: LoRA gradients, {} tensors (worst {:.1e}: {})", ours.grads.len(), worst.1, worst.0),
        (diff / norm.max(1e-30)).sqrt(),
        gradient_tolerance,
    );
    Ok(rows)
}

/// The table `attune bench agree` prints.
pub fn agreement_report(rows: &[Agreement]) -> String {
    let mut out =
        format!("{:<92} {:>10} {:>9}  result\n", "device vs CPU, same seeded weights", "rel. error", "tolerance");
    for row in rows {
        out.push_str(&format!(
            "{:<92} {:>10.2e} {:>9.0e}  {}\n",
            row.what,
            row.relative_error,
            row.tolerance,
            if row.pass { "ok" } else { "FAIL" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_models::tiny_shapes;

    #[test]
    fn agreement_passes_for_the_same_weights_and_fails_for_other_ones() {
        let (dir, retriever, generator) = tiny_shapes();
        let pair = |seed| seeded_pair(&retriever, &generator, &Device::Cpu, DType::F32, seed).unwrap();
        let reference = outputs(&pair(17), &Device::Cpu).unwrap();
        let same = compare("f32", &outputs(&pair(17), &Device::Cpu).unwrap(), &reference, 1e-4, 1e-3).unwrap();
        assert_eq!(same.len(), 4);
        assert!(same.iter().all(|r| r.pass && r.relative_error == 0.0), "{same:?}");
        let other = compare("f32", &outputs(&pair(18), &Device::Cpu).unwrap(), &reference, 1e-4, 1e-3).unwrap();
        assert!(other.iter().all(|r| !r.pass), "other weights must disagree everywhere: {other:?}");
        // bf16 on the CPU: within the loose tolerances, but not equal.
        let bf16 = seeded_pair(&retriever, &generator, &Device::Cpu, DType::BF16, 17).unwrap();
        let rows = compare("bf16", &outputs(&bf16, &Device::Cpu).unwrap(), &reference, 3e-2, 5e-2).unwrap();
        assert!(rows.iter().all(|r| r.pass && r.relative_error > 0.0), "{rows:?}");
        drop(dir);
    }
}
