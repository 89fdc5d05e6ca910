"""The PyTorch side of `attune bench device` (run by scripts/gpu-check.sh), and the report that sets
the two side by side.

    python scripts/reference/bench_gpu.py measure --shapes build/gpu-check/shapes --retriever minilm \
        --generator smollm2 [--parts embed,retriever-step,e2e-step,decode] [--device cuda] [--dtype bf16]
    python scripts/reference/bench_gpu.py report OUT_DIR

`measure` builds the models from the shape folders' config.json with random weights (as Attune's
`--random-init` does; throughput does not depend on the values) and times the same work as
`attune bench device`, printing one JSON line:

- embed: 1024 passages of the benchmark workload, cut at 128 tokens, batch 128, mean pooling and
  normalisation, inference mode;
- retriever-step: batch 64 of `workload()`, LoRA r 8 / alpha 16 / dropout 0.05 on query/key/value,
  in-batch contrastive loss (scale 20), AdamW, clipping at 1.0;
- e2e-step: batch 8, contrastive loss plus RAG-Sequence NLL over each question's top-4 of the
  batch's passages (gold always included), logits only at answer positions, LoRA on q/k/v/o of the
  generator too, all 32 sequences in one graph;
- decode: prefill of the benchmark prompt, then 128 greedy tokens with a KV cache, batch 1.

Base weights in --dtype, LoRA weights in float32 (peft's default), as Attune does. Seconds per step
are medians of 5 steps after a warm-up step. It also prints the steps' model FLOPs, counted from the
tokens processed: forward 2·N·tokens for the N non-embedding linear weights, plus attention
(4·s²·d per layer and sequence) and the LM head at answer positions; a training step with frozen
base weights is twice its forward (the backward pass computes activation gradients only).

`report` reads attune-*.json and torch-*.json from OUT_DIR and prints the table with ratios and MFU.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

from workloads import INSTRUCTION, PROMPT, rag_sequence_loss, texts_of, workload






def measure(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    shapes = pathlib.Path(args.shapes)
    parts = args.parts.split(",")
    out = {"torch": torch.__version__, "device": str(device), "dtype": args.dtype}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def linear_params(model, skip=("lm_head",)):
        return sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip) and "lora_" not in n)

    # The retriever: BERT from the shape's config, its tokenizer cut at 128 tokens, padded per batch.
    retriever_dir = shapes / args.retriever
    bert_config = BertConfig.from_dict(json.loads((retriever_dir / "config.json").read_text()))
    bert_tokenizer = Tokenizer.from_file(str(retriever_dir / "tokenizer.json"))
    bert_tokenizer.enable_truncation(128)
    bert_tokenizer.enable_padding(pad_id=bert_config.pad_token_id or 0)

    def bert():
        with device:  # initialised where it runs (a 1B model's init on the CPU takes long)
            return BertModel(bert_config, add_pooling_layer=False).to(dtype=dtype)

    def tokenize(texts):
        encodings = bert_tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], device=device)
        mask = torch.tensor([e.attention_mask for e in encodings], device=device)
        return ids, mask

    def embed(model, texts):
        ids, mask = tokenize(texts)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1), mask

    def encoder_flops(mask, n_linear):
        lengths = mask.sum(1).tolist()
        d, layers = bert_config.hidden_size, bert_config.num_hidden_layers
        return sum(2 * n_linear * s + 4 * s * s * d * layers for s in lengths)

    def lora_bert():
        model = bert()
        n_linear = linear_params(model)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=["query", "key", "value"]))
        model.train()
        return model, n_linear

    def timed_steps(step):
        step()
        sync()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            flops = step()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times), flops

    if "embed" in parts:
        model = bert().eval()
        texts = texts_of(1024)
        best = float("inf")
        with torch.inference_mode():
            embed(model, texts[:128])
            for _ in range(3):
                sync()
                start = time.perf_counter()
                for i in range(0, len(texts), 128):
                    embed(model, texts[i:i + 128])
                sync()
                best = min(best, time.perf_counter() - start)
        out["embeddings_per_s"] = len(texts) / best
        del model

    if "retriever-step" in parts:
        model, n_linear = lora_bert()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        rows = workload(64)

        def step():
            q, qmask = embed(model, [r["question"] for r in rows])
            p, pmask = embed(model, [r["passage"] for r in rows])
            loss = torch.nn.functional.cross_entropy(q @ p.T * 20.0, torch.arange(len(rows), device=device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return 2 * (encoder_flops(qmask, n_linear) + encoder_flops(pmask, n_linear))

        out["retriever_step_s"], out["retriever_step_flops"] = timed_steps(step)
        del model, optimizer

    generator_dir = shapes / args.generator
    if "e2e-step" in parts or "decode" in parts:
        llama_config = LlamaConfig.from_dict(json.loads((generator_dir / "config.json").read_text()))
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(generator_dir / "tokenizer.json"))
        template = json.loads((generator_dir / "tokenizer_config.json").read_text()).get("chat_template")
        tokenizer.chat_template = template

        def llama():
            with device:
                return LlamaForCausalLM(llama_config).to(dtype=dtype)

    if "e2e-step" in parts:
        retriever, bert_linear = lora_bert()
        generator = llama()
        gen_linear = linear_params(generator)
        generator = get_peft_model(generator, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        generator.train()
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        params = [p for p in list(retriever.parameters()) + list(generator.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        rows = workload(8)
        k, scale = 4, 20.0
        d, layers, vocab = llama_config.hidden_size, llama_config.num_hidden_layers, llama_config.vocab_size

        def cut(text, limit):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return text if len(ids) <= limit else tokenizer.decode(ids[:limit], skip_special_tokens=True)

        def encode(question, passage, answer):
            message = f"{INSTRUCTION}\n\nPassage: {cut(passage, 128).strip()}\n\nQuestion: {question.strip()}"
            if template:
                prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                                       add_generation_prompt=True, tokenize=False)
            else:
                prompt = f"{message}\n\nAnswer:"
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = (tokenizer(" " + answer.strip() if not template else answer.strip(),
                                    add_special_tokens=False)["input_ids"] + [eos])[:32]
            return prompt_ids, answer_ids

        def step():
            q, qmask = embed(retriever, [r["question"] for r in rows])
            p, pmask = embed(retriever, [r["passage"] for r in rows])
            scores = q @ p.T * scale
            retriever_loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(rows), device=device))
            generator_loss, sequences = rag_sequence_loss(generator, rows, scores, k, encode)
            total = retriever_loss + generator_loss
            optimizer.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lengths = [len(a) + len(b) for a, b in sequences]
            answers = sum(len(b) for _, b in sequences)
            generator_forward = sum(2 * gen_linear * s + 4 * s * s * d * layers for s in lengths) + 2 * d * vocab * answers
            retriever_forward = encoder_flops(qmask, bert_linear) + encoder_flops(pmask, bert_linear)
            return 2 * (generator_forward + retriever_forward)

        out["e2e_step_s"], out["e2e_step_flops"] = timed_steps(step)
        del retriever, generator, optimizer

    if "decode" in parts:
        model = llama().eval()
        ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]], device=device)
        with torch.inference_mode():
            def prefill():
                sync()
                start = time.perf_counter()
                model(input_ids=ids, use_cache=True)
                sync()
                return time.perf_counter() - start

            prefill()
            best_prefill = min(prefill() for _ in range(3))

            def decode():
                result = model(input_ids=ids, use_cache=True)
                cache = result.past_key_values
                next_id = result.logits[:, -1].argmax(-1, keepdim=True)
                sync()
                start = time.perf_counter()
                for _ in range(128):
                    result = model(input_ids=next_id, past_key_values=cache, use_cache=True)
                    cache = result.past_key_values
                    next_id = result.logits[:, -1].argmax(-1, keepdim=True)
                    next_id.item()
                sync()
                return time.perf_counter() - start

            decode()
            best_decode = min(decode() for _ in range(2))
        out["prompt_tokens"] = ids.shape[1]
        out["prefill_tokens_per_s"] = ids.shape[1] / best_prefill
        out["decode_tokens_per_s"] = 128 / best_decode
        del model

    if device.type == "cuda":
        out["memory_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(out))


def peak_bf16_flops(gpu):
    """Dense bf16 tensor-core peak of the GPU, from its name (None when unknown)."""
    name = (gpu or "").upper()
    if "H100" in name:
        return 756e12 if "PCIE" in name else 835e12 if "NVL" in name else 989.4e12
    if "H200" in name or "GH200" in name:
        return 989.4e12
    if "A100" in name:
        return 312e12
    return None


def report(args):
    out = pathlib.Path(args.out_dir)
    rows = []
    gpu = None
    for name in sorted(p.stem.removeprefix("torch-") for p in out.glob("torch-*.json")):
        torch_side = json.loads((out / f"torch-{name}.json").read_text())
        attune_path = out / f"attune-{name}.json"
        attune = json.loads(attune_path.read_text()) if attune_path.exists() else {}
        gpu = gpu or torch_side.get("gpu")
        rows.append((name, attune, torch_side))
    peak = peak_bf16_flops(gpu)
    print(f"GPU: {gpu or 'none'}; bf16 dense peak used for MFU: {peak / 1e12:.0f} TFLOP/s" if peak else f"GPU: {gpu or 'none'}")
    header = f"{'workload':<44} {'attune':>10} {'pytorch':>10} {'ratio':>7} {'MFU attune':>11} {'MFU pytorch':>12}"
    print(header)
    print("-" * len(header))
    for name, attune, torch_side in rows:
        def line(label, key, higher_is_better, flops_key=None):
            a, t = attune.get(key), torch_side.get(key)
            if a is None and t is None:
                return
            ratio = "-" if a is None or t is None else f"{(a / t if higher_is_better else t / a):.2f}x"
            mfu_a = mfu_t = ""
            flops = torch_side.get(flops_key) if flops_key else None
            if flops and peak:
                mfu_a = f"{flops / a / peak:.1%}" if a else "-"
                mfu_t = f"{flops / t / peak:.1%}" if t else "-"
            fmt = lambda v: "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.0f}")
            print(f"{name + ': ' + label:<44} {fmt(a):>10} {fmt(t):>10} {ratio:>7} {mfu_a:>11} {mfu_t:>12}")
        line("embeddings/s", "embeddings_per_s", True)
        line("retriever step, s", "retriever_step_s", False, "retriever_step_flops")
        line("e2e step, s", "e2e_step_s", False, "e2e_step_flops")
        line("prefill tokens/s", "prefill_tokens_per_s", True)
        line("decode tokens/s", "decode_tokens_per_s", True)
        memory = [f"attune {attune['memory_used_mib']:.0f} MiB in use (driver)" if attune.get("memory_used_mib") else None,
                  f"pytorch {torch_side['memory_peak_mib']:.0f} MiB peak allocated" if torch_side.get("memory_peak_mib") else None]
        memory = [m for m in memory if m]
        if memory:
            print(f"{'':<44} memory: {'; '.join(memory)}")
    print("ratio: above 1 means Attune is faster. MFU: model FLOPs of the step (PyTorch's count of the same tokens) / time / peak.")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--shapes", required=True)
    m.add_argument("--retriever", default="minilm")
    m.add_argument("--generator", default="smollm2")
    m.add_argument("--parts", default="embed,retriever-step,e2e-step,decode")
    m.add_argument("--device", default="cuda")
    m.add_argument("--dtype", default="bf16", choices=["bf16", "f32", "f16"])
    m.add_argument("--steps", type=int, default=5)
    r = sub.add_parser("report")
    r.add_argument("out_dir")
    args = parser.parse_args()
    measure(args) if args.command == "measure" else report(args)


if __name__ == "__main__":
    sys.exit(main())
