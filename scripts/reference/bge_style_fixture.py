"""Writes backend/tests/fixtures/tiny_bge/: a tiny, randomly initialised BERT retriever in the BGE
style (CLS pooling, normalised, a query instruction), saved the old way (`pytorch_model.bin`, not
safetensors) with its own small WordPiece tokenizer, plus `reference.json`: what
sentence-transformers computes for a few queries (with the query prompt) and passages.
Attune's loader is tested against it: the pickle path, CLS pooling and query prefixes.

Run once, by hand (needs torch, transformers, sentence-transformers, tokenizers):
    python scripts/reference/bge_style_fixture.py
"""

import json
import pathlib
import shutil

import torch
from sentence_transformers import SentenceTransformer, models
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "backend" / "tests" / "fixtures" / "tiny_bge"
QUERY_PROMPT = "Represent this sentence for searching relevant passages: "

CORPUS = [
    "Aspirin irreversibly inhibits cyclooxygenase enzymes.",
    "The tenant must give thirty days written notice before leaving.",
    "Revenue grew twelve percent year over year.",
    "In R, a data frame is a list of vectors of equal length.",
    "Paris is the capital and most populous city of France.",
    "Represent this sentence for searching relevant passages:",
    "What does aspirin inhibit? Which city is the capital of France? How long is the notice period?",
]
QUERIES = ["What does aspirin inhibit?", "Which city is the capital of France?", "How long is the notice?"]
PASSAGES = CORPUS[:5] + ["Ünïcödé and   extra   spaces, numbers 12345 and symbols #@!"]


def main():
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    work = OUT / "_build"

    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=64,
    )

    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )
    bert = BertModel(config, add_pooling_layer=False)
    bert.save_pretrained(work, safe_serialization=False)
    fast.save_pretrained(work)

    transformer = models.Transformer(str(work), max_seq_length=64)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()],
                                prompts={"query": QUERY_PROMPT}, device="cpu")
    model.save(str(OUT))
    shutil.rmtree(work)
    # sentence-transformers 6 always writes safetensors: rewrite the weights as the pickle many
    # older checkpoints still ship.
    from safetensors.torch import load_file
    state = load_file(OUT / "model.safetensors")
    torch.save(state, OUT / "pytorch_model.bin")
    (OUT / "model.safetensors").unlink()
    (OUT / "README.md").unlink(missing_ok=True)
    assert (OUT / "pytorch_model.bin").is_file() and not (OUT / "model.safetensors").exists()

    model = SentenceTransformer(str(OUT), device="cpu")
    queries = model.encode(QUERIES, prompt_name="query", convert_to_numpy=True)
    passages = model.encode(PASSAGES, convert_to_numpy=True)
    reference = {
        "script": "scripts/reference/bge_style_fixture.py",
        "query_prompt": QUERY_PROMPT,
        "queries": [{"text": t, "embedding": e.tolist()} for t, e in zip(QUERIES, queries)],
        "passages": [{"text": t, "embedding": e.tolist()} for t, e in zip(PASSAGES, passages)],
    }
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
