//! `attune bench model`: throughput of the model core on this machine — retriever embeddings/s,
//! generator prefill and decode tokens/s — beside the same work done by PyTorch
//! (`scripts/reference/bench_model.py`), as ratios.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{D, Device, Tensor};

use crate::model::generator::Generator;
use crate::model::llama::KvCache;
use crate::model::retriever::{Retriever, TextRole};

/// Texts per retriever batch, and their length in tokens (longer texts are truncated).
pub const EMBED_BATCH: usize = 32;
pub const EMBED_MAX_TOKENS: usize = 128;
/// Timed runs of each figure (after a warm-up run); the figure is their median.
pub const RUNS: usize = 5;
/// Timed runs of each GEMM shape (they take milliseconds).
pub const GEMM_RUNS: usize = 20;
/// Tokens generated greedily for the decode figure.
pub const NEW_TOKENS: usize = 128;

/// What to measure with.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub models_dir: PathBuf,
    /// A Python with torch, transformers and sentence-transformers; `None` skips the comparison.
    pub python: Option<PathBuf>,
    pub reference_script: PathBuf,
}

/// Throughputs of one implementation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Throughput {
    pub embeddings_per_s: f64,
    pub prompt_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// GFLOP/s of `x Wᵀ` on [`GEMM_SHAPES`], one per option of this side ([`GemmRate::option`]).
    #[serde(default)]
    pub gemm: Vec<GemmRate>,
}

/// One GEMM option's rate on one shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GemmRate {
    /// What computed it: Attune's matmul backend with the weight row-major or input-major, or
    /// PyTorch's `x @ w.T`.
    pub option: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub gflops: f64,
}

/// `(m, k, n)` of `x (m, k) · Wᵀ (k, n)` the benches run most: SmolLM2's MLP and attention
/// projections at a 121-token prefill and at a training step's 2048 tokens, and MiniLM's MLP at an
/// embedding batch (32 × 128 tokens). Equal to the reference script's.
pub const GEMM_SHAPES: [(usize, usize, usize); 5] =
    [(121, 576, 576), (121, 576, 1536), (121, 1536, 576), (2048, 576, 1536), (4096, 384, 1536)];

/// The matmul backend this build uses on the CPU.
pub fn gemm_backend() -> &'static str {
    if cfg!(feature = "mkl") { "mkl" } else { "gemm-crate" }
}

/// GFLOP/s of candle's CPU matmul on [`GEMM_SHAPES`], the weight stored row-major (as loaded) and
/// input-major (as `linear::input_major` stores frozen weights): medians of [`GEMM_RUNS`] runs.
pub fn measure_gemm() -> anyhow::Result<Vec<GemmRate>> {
    let device = Device::Cpu;
    let mut rates = Vec::new();
    for (m, k, n) in GEMM_SHAPES {
        let x = Tensor::randn(0f32, 1.0, (m, k), &device)?;
        let weight = Tensor::randn(0f32, 1.0, (n, k), &device)?;
        let layouts = [("row-major", weight.clone()), ("input-major", crate::model::linear::input_major(weight)?)];
        for (layout, weight) in layouts {
            let transposed = weight.t()?;
            x.matmul(&transposed)?;
            let seconds = median_of(GEMM_RUNS, || Ok(x.matmul(&transposed)?))?;
            rates.push(GemmRate {
                option: format!("attune {} {layout}", gemm_backend()),
                m,
                k,
                n,
                gflops: 2.0 * (m * k * n) as f64 / seconds / 1e9,
            });
        }
    }
    Ok(rates)
}

/// The workload both sides run (must equal the reference script's).
pub fn texts() -> Vec<String> {
    texts_of(128)
}

/// `count` passages of the benchmark workload (each longer than 128 tokens).
pub fn texts_of(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("Passage {i}: {}", "The quick brown fox jumps over the lazy dog. ".repeat(20))).collect()
}

pub fn prompt() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(12)
}

/// Median wall time of `runs` runs of `work` (after the caller's warm-up run).
fn median_of<T>(runs: usize, mut work: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    let mut seconds = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        work()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok(seconds[seconds.len() / 2])
}

/// Measures Attune's model core on `device`.
pub fn measure(models_dir: &Path, device: &Device) -> anyhow::Result<Throughput> {
    let mut retriever = Retriever::load(&models_dir.join("all-MiniLM-L6-v2"), device)?;
    retriever.set_max_length(EMBED_MAX_TOKENS)?;
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    retriever.embed(&refs[..EMBED_BATCH], TextRole::Passage, EMBED_BATCH)?;
    let seconds = median_of(RUNS, || Ok(retriever.embed(&refs, TextRole::Passage, EMBED_BATCH)?))?;
    let embeddings_per_s = texts.len() as f64 / seconds;

    let generator = Generator::load(&models_dir.join("SmolLM2-135M-Instruct"), device)?;
    let ids = generator.encode(&prompt())?;
    let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
    let model = generator.model();
    // Prefill as generation does it (and as the reference's `logits_to_keep=1` does): the next
    // token's logits only.
    model.next_token_logits(&input, &mut KvCache::default(), None)?;
    let prefill = median_of(RUNS, || Ok(model.next_token_logits(&input, &mut KvCache::default(), None)?))?;
    let whole = median_of(RUNS, || {
        // Greedy, never stopping early: exactly NEW_TOKENS steps after the prompt.
        let mut cache = KvCache::default();
        let mut logits = model.next_token_logits(&input, &mut cache, None)?;
        for _ in 0..NEW_TOKENS {
            let next = logits.get(0)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
            logits = model.next_token_logits(&Tensor::new(&[next], device)?.unsqueeze(0)?, &mut cache, None)?;
        }
        Ok(())
    })?;
    Ok(Throughput {
        embeddings_per_s,
        prompt_tokens: ids.len(),
        prefill_tokens_per_s: ids.len() as f64 / prefill,
        decode_tokens_per_s: NEW_TOKENS as f64 / (whole - prefill).max(1e-9),
        gemm: measure_gemm()?,
    })
}

/// Runs the PyTorch reference script and reads its JSON line.
pub fn measure_reference(config: &BenchConfig) -> anyhow::Result<Throughput> {
    let python = config.python.as_ref().ok_or_else(|| anyhow::anyhow!("no Python given"))?;
    run_reference(python, &config.reference_script, &config.models_dir, &[])
}

/// Runs a reference script (`python SCRIPT --models-dir DIR ARGS...`) and parses the last JSON line
/// it prints.
pub fn run_reference<T: serde::de::DeserializeOwned>(
    python: &Path,
    script: &Path,
    models_dir: &Path,
    args: &[&str],
) -> anyhow::Result<T> {
    let output = crate::memory::without_allocator_settings(&mut Command::new(python))
        .arg(script)
        .arg("--models-dir")
        .arg(models_dir)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} {} failed: {}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("no JSON from the reference"))?;
    Ok(serde_json::from_str(line)?)
}

/// The table `attune bench model` prints.
pub fn report(ours: &Throughput, reference: Option<&Throughput>) -> String {
    let mut out = format!("{:<44} {:>12} {:>12} {:>8}\n", "model core (this machine)", "attune", "pytorch", "ratio");
    let rows = [
        (
            format!("retriever embeddings/s (batch {EMBED_BATCH}, {EMBED_MAX_TOKENS} tokens)"),
            ours.embeddings_per_s,
            reference.map(|r| r.embeddings_per_s),
        ),
        (
            format!("generator prefill tokens/s ({} tokens)", ours.prompt_tokens),
            ours.prefill_tokens_per_s,
            reference.map(|r| r.prefill_tokens_per_s),
        ),
        (
            format!("generator decode tokens/s (greedy, {NEW_TOKENS} new)"),
            ours.decode_tokens_per_s,
            reference.map(|r| r.decode_tokens_per_s),
        ),
    ];
    for (name, attune, torch) in rows {
        match torch {
            Some(torch) => out.push_str(&format!("{name:<44} {attune:>12.1} {torch:>12.1} {:>7.2}x\n", attune / torch)),
            None => out.push_str(&format!("{name:<44} {attune:>12.1} {:>12} {:>8}\n", "-", "-")),
        }
    }
    out.push_str(&format!(
        "\n{:<44} {:>12} {:>12} {:>8}\n",
        "GEMM GFLOP/s, x (m, k) · Wᵀ (k, n)", "attune", "pytorch", "ratio"
    ));
    for rate in &ours.gemm {
        let torch = reference.and_then(|r| r.gemm.iter().find(|t| (t.m, t.k, t.n) == (rate.m, rate.k, rate.n)));
        let name = format!("{} {}×{}×{}", rate.option.trim_start_matches("attune "), rate.m, rate.k, rate.n);
        match torch {
            Some(t) => out.push_str(&format!(
                "{name:<44} {:>12.1} {:>12.1} {:>7.2}x\n",
                rate.gflops,
                t.gflops,
                rate.gflops / t.gflops
            )),
            None => out.push_str(&format!("{name:<44} {:>12.1} {:>12} {:>8}\n", rate.gflops, "-", "-")),
        }
    }
    out.push_str(&format!(
        "ratio = attune / pytorch throughput (above 1: attune is faster). f32 on CPU, weights dequantized;\n\
         medians of {RUNS} runs after a warm-up (GEMMs: of {GEMM_RUNS}); prefill computes the next token's logits \
         only, on both sides.\n"
    ));
    out
}

/// Both sides' figures and their ratios, as `attune bench model --json` writes them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelFigures {
    pub attune: Throughput,
    pub pytorch: Option<Throughput>,
    /// Attune / PyTorch throughput, per figure (above 1: Attune is faster).
    pub ratios: Option<Ratios>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ratios {
    pub embeddings: f64,
    pub prefill: f64,
    pub decode: f64,
}

impl ModelFigures {
    pub fn new(attune: Throughput, pytorch: Option<Throughput>) -> Self {
        let ratios = pytorch.as_ref().map(|p| Ratios {
            embeddings: attune.embeddings_per_s / p.embeddings_per_s,
            prefill: attune.prefill_tokens_per_s / p.prefill_tokens_per_s,
            decode: attune.decode_tokens_per_s / p.decode_tokens_per_s,
        });
        ModelFigures { attune, pytorch, ratios }
    }
}
