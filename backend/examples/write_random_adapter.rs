//! Writes an Attune LoRA adapter (random, non-zero) for all-MiniLM-L6-v2 into a folder, with the
//! embeddings Attune computes through it, so `scripts/reference/lora_fixtures.py --check DIR` can
//! prove that Python's `peft` loads Attune's adapters and gets the same embeddings.
//!
//! cargo run -p attune-backend --example write_random_adapter -- DIR

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use attune::model::lora::{self, LoraConfig};
use attune::model::retriever::{Retriever, TextRole};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: write_random_adapter DIR"))?);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut retriever = Retriever::load(&root.join("models/all-MiniLM-L6-v2"), &Device::Cpu)?;
    let config = LoraConfig::new(4, 8.0, 0.0, &["query", "key", "value"]);
    let varmap = lora::attach_trainable(retriever.model_mut(), &config, &Device::Cpu)?;
    for (name, var) in varmap.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        if name.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu)?)?;
        }
    }
    lora::save(&out, &varmap, &config)?;
    // The same sentences as the reference script.
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("backend/tests/fixtures/minilm_lora/reference.json"),
    )?)?;
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone())?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let embeddings = retriever.embed(&texts, TextRole::Passage, 8)?.to_vec2::<f32>()?;
    std::fs::write(out.join("attune_embeddings.json"), serde_json::to_string(&embeddings)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
