"""Writes backend/tests/fixtures/minilm_lora/: a PEFT LoRA adapter for all-MiniLM-L6-v2 (rank 4 on
query and value, random non-zero A and B, seed 0) as `peft` saves it, plus `reference.json` with the
sentence embeddings (mean pooling, normalised) that the adapted model gives. Attune's loader is tested
against them.

With `--check DIR`, instead loads an adapter that Attune saved in DIR onto the base model with `peft`
and prints the embeddings of the same sentences, to compare with Attune's (`DIR/attune_embeddings.json`).

Run once, by hand, after `make models` (needs torch, transformers, peft):
    python scripts/reference/lora_fixtures.py
    python scripts/reference/lora_fixtures.py --check /path/to/attune/adapter
"""

import json
import pathlib
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
OUT = ROOT / "backend" / "tests" / "fixtures" / "minilm_lora"
SENTENCES = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Does low-dose aspirin reduce the risk of colorectal cancer?",
    "In R, a data frame is a list of vectors of equal length.",
    "Café, naïve, résumé — diacritics.",
    "A man is riding a horse.",
    "Gradient accumulation must sum every micro-batch.",
    "a",
]


def embed(model, tokenizer):
    features = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**features).last_hidden_state
    mask = features["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModel.from_pretrained(MODEL).eval()
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        adapter = pathlib.Path(sys.argv[2])
        model = PeftModel.from_pretrained(base, adapter).eval()
        ours = torch.tensor(json.loads((adapter / "attune_embeddings.json").read_text()))
        theirs = embed(model, tokenizer)
        diff = (ours - theirs).abs().max().item()
        print(f"peft loaded {adapter}: max |attune - peft| = {diff:.3e}")
        sys.exit(0 if diff <= 1e-4 else 1)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"],
                        init_lora_weights=False)
    model = get_peft_model(base, config).eval()
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    (OUT / "README.md").unlink(missing_ok=True)
    (OUT / "reference.json").write_text(json.dumps({
        "generated_by": "scripts/reference/lora_fixtures.py",
        "sentences": SENTENCES,
        "embeddings": [[round(v, 7) for v in row] for row in embed(model, tokenizer).tolist()],
    }, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
