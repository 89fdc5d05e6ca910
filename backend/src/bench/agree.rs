//! `attune bench agree`: checks that a device computes what the CPU computes on the same seeded
//! weights — embeddings, logits, the e2e loss and every LoRA gradient, in f32 with tight tolerances
//! and in bf16 with loose ones.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::train::workload;
use crate::model::generator::Generator;
use crate::model::layers::Mode;
use crate::model::llama::KvCache;
use crate::model::lora::{self, LoraConfig};
use crate::model::random::{RandomWeights, WeightSource};
use crate::model::retriever::{Retriever, TextRole};
use crate::train::step::{LossConfig, Models, TrainMode, batch_gradients};

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
    let ids = pair.generator.encode(&super::model::prompt())?;
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
