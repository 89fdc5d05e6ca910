"""The PyTorch side of `attune bench model`: the same work with sentence-transformers and transformers
on this machine, printed as one JSON object. `attune bench model` runs it and prints the ratios.

    python scripts/reference/bench_model.py [--models-dir models]
"""

import argparse
import json
import pathlib
import time

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

from workloads import PROMPT, texts_of

TEXTS = texts_of(128)
NEW_TOKENS = 128
GEMM_SHAPES = [(121, 576, 576), (121, 576, 1536), (121, 1536, 576), (2048, 576, 1536), (4096, 384, 1536)]
RUNS = 5  # timed runs of each figure after a warm-up run; the figure is their median
GEMM_RUNS = 20  # timed runs of each GEMM shape


def median_of(runs, fn):
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default="models")
    models = pathlib.Path(parser.parse_args().models_dir)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    st = SentenceTransformer(str(models / "all-MiniLM-L6-v2"), device="cpu")
    st.max_seq_length = 128
    with torch.inference_mode():
        st.encode(TEXTS[:32], batch_size=32)
        seconds = median_of(RUNS, lambda: st.encode(TEXTS, batch_size=32))
    result["embeddings_per_s"] = len(TEXTS) / seconds

    gen_dir = models / "SmolLM2-135M-Instruct"
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(gen_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(gen_dir, gguf_file=gguf, torch_dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        # Prefill as `generate` does it: the next token's logits only.
        model(ids, logits_to_keep=1)
        prefill = median_of(RUNS, lambda: model(ids, logits_to_keep=1))
        whole = median_of(RUNS, lambda: model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                                  do_sample=False, pad_token_id=tokenizer.eos_token_id))
    result["prompt_tokens"] = ids.shape[1]
    result["prefill_tokens_per_s"] = ids.shape[1] / prefill
    result["decode_tokens_per_s"] = NEW_TOKENS / max(whole - prefill, 1e-9)
    # x (m, k) @ W.T for the shapes of GEMM_SHAPES in backend/src/bench/model.rs.
    result["gemm"] = []
    with torch.inference_mode():
        for m, k, n in GEMM_SHAPES:
            x, w = torch.randn(m, k), torch.randn(n, k)
            x @ w.T
            seconds = median_of(GEMM_RUNS, lambda: x @ w.T)
            result["gemm"].append({"option": "pytorch", "m": m, "k": k, "n": n, "gflops": 2 * m * k * n / seconds / 1e9})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
