"""The PyTorch side of `attune bench train`: the same optimiser steps on this machine, printed as one
JSON object of seconds per step (median after a warm-up step).

- retriever mode: all-MiniLM-L6-v2 with LoRA (r 8, alpha 16, dropout 0.05 on query/key/value),
  sentence-transformers' MultipleNegativesRankingLoss (scale 20), batch 16, passages cut at 128 tokens,
  AdamW, gradient clipping at 1.0;
- e2e mode: the same retriever plus SmolLM2-135M-Instruct (from the GGUF, dequantized to f32) with
  LoRA on q/k/v/o; contrastive loss plus RAG-Sequence NLL over each question's top-4 of the batch's
  passages (gold always included), logits only at answer positions, batch 8, one AdamW step;
- generator mode: that generator alone, NLL of each answer given its gold passage (cut at 200
  tokens), batch 8; `generator-checkpointed` the same with transformers' gradient checkpointing.

One part per process (`--part`), so that the peak resident size it prints (`peak_rss_bytes`, from
getrusage) is that part's.

    python scripts/reference/bench_train.py --part retriever|e2e|generator|generator-checkpointed [--steps 5] [--models-dir models]
"""

import argparse
import json
import pathlib
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.losses import MultipleNegativesRankingLoss
from transformers import AutoModelForCausalLM, AutoTokenizer

from workloads import INSTRUCTION, rag_sequence_loss, workload




def retriever(models):
    model = SentenceTransformer(str(models / "all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128
    peft = get_peft_model(model[0].auto_model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                           target_modules=["query", "key", "value"]))
    model[0].auto_model = peft
    return model


def timed(step, runs):
    step()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_retriever(models, steps):
    model = retriever(models)
    model.train()
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    rows = workload(16)

    def step():
        features = [model.tokenize([r["question"] for r in rows]), model.tokenize([r["passage"] for r in rows])]
        value = loss(features, None)
        optimizer.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return timed(step, steps)


def load_generator(models, checkpointing=False):
    gen_dir = models / "SmolLM2-135M-Instruct"
    gguf = next(p.name for p in gen_dir.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(gen_dir, gguf_file=gguf)
    generator = AutoModelForCausalLM.from_pretrained(gen_dir, gguf_file=gguf, torch_dtype=torch.float32)
    if checkpointing:
        # Recompute each decoder layer in the backward pass (non-reentrant: the LoRA weights get gradients).
        generator.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    generator = get_peft_model(generator, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    generator.train()
    return tokenizer, generator


def encoder_of(tokenizer, passage_tokens):
    """(question, passage, answer) -> (prompt ids, answer ids), as Attune's trainer builds them."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def cut(text, limit):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else tokenizer.decode(ids[:limit], skip_special_tokens=True)

    def encode(question, passage, answer):
        message = f"{INSTRUCTION}\n\nPassage: {cut(passage, passage_tokens).strip()}\n\nQuestion: {question.strip()}"
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = (tokenizer(answer.strip(), add_special_tokens=False)["input_ids"] + [eos])[:32]
        return prompt_ids, answer_ids

    return encode


def bench_generator(models, steps, checkpointing=False):
    tokenizer, generator = load_generator(models, checkpointing)
    params = [p for p in generator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    rows = workload(8)
    encode = encoder_of(tokenizer, 200)

    def step():
        # One candidate per question (its gold passage), prior 1: the plain NLL of the answers.
        scores = torch.zeros((len(rows), len(rows)))
        loss, _ = rag_sequence_loss(generator, rows, scores, 1, encode)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return timed(step, steps)


def bench_e2e(models, steps):
    st = retriever(models)
    st.train()
    tokenizer, generator = load_generator(models)
    params = [p for p in list(st.parameters()) + list(generator.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    rows = workload(8)
    k, scale = 4, 20.0
    encode = encoder_of(tokenizer, 128)

    def step():
        qf = st.tokenize([r["question"] for r in rows])
        pf = st.tokenize([r["passage"] for r in rows])
        q = torch.nn.functional.normalize(st(qf)["sentence_embedding"], dim=-1)
        p = torch.nn.functional.normalize(st(pf)["sentence_embedding"], dim=-1)
        scores = q @ p.T * scale
        labels = torch.arange(len(rows))
        retriever_loss = torch.nn.functional.cross_entropy(scores, labels)
        generator_loss, sequences = rag_sequence_loss(generator, rows, scores, k, encode)
        total = retriever_loss + generator_loss
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return timed(step, steps)


PARTS = {"retriever": bench_retriever, "e2e": bench_e2e, "generator": bench_generator,
         "generator-checkpointed": lambda models, steps: bench_generator(models, steps, checkpointing=True)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    step_s = PARTS[args.part](pathlib.Path(args.models_dir), args.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "part": args.part,
                      "step_s": step_s, "peak_rss_bytes": peak}))


if __name__ == "__main__":
    main()
