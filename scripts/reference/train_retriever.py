"""The reference for `attune train --mode retriever`: the same LoRA fine-tuning of all-MiniLM-L6-v2 done
by sentence-transformers' MultipleNegativesRankingLoss (in-batch negatives, scale 20) with PyTorch's
AdamW and transformers' linear warmup/decay schedule: same data, epochs, batch size, learning rate,
LoRA rank/alpha/dropout and targets, passage length, gradient clipping. Writes the adapter in PEFT's
layout, so `attune eval --retriever-adapter DIR` scores both trainers with the same code.

    python scripts/reference/train_retriever.py --data ../shared/data/qa/pubmedqa.jsonl --out /tmp/st-pubmed \
        [--epochs 1] [--batch-size 16] [--lr 1e-4] [--max-train-examples N] [--seed 0]

(needs torch, sentence-transformers, peft: scripts/reference/requirements.txt)
"""

import argparse
import json
import pathlib
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.losses import MultipleNegativesRankingLoss
from transformers import get_linear_schedule_with_warmup

ROOT = pathlib.Path(__file__).resolve().parents[2]


def training_rows(path, limit):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    split_path = pathlib.Path(str(path)[: -len(".jsonl")] + ".split.tsv")
    if split_path.exists():
        split = dict(line.rstrip("\n").split("\t")[:2] for line in list(open(split_path))[1:])
        rows = [r for r in rows if split.get(r["id"]) == "train"]
    rows = [r for r in rows if r["question"].strip() and r["passage"].strip() and r["answer"].strip()]
    return rows[:limit] if limit else rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=str(ROOT / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rows = training_rows(args.data, args.max_train_examples)
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = args.max_seq_length
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=["query", "key", "value"])
    peft_model = get_peft_model(model[0].auto_model, lora)
    model[0].auto_model = peft_model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad), "LoRA is what trains"
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(rows) // args.batch_size)
    total = steps_per_epoch * args.epochs
    schedule = get_linear_schedule_with_warmup(optimizer, round(total * args.warmup_ratio), total)
    model.train()
    generator = torch.Generator().manual_seed(args.seed)
    started, step = time.time(), 0
    for _ in range(args.epochs):
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(rows), args.batch_size):
            batch = [rows[i] for i in order[start:start + args.batch_size]]
            features = [model.tokenize([r["question"] for r in batch]), model.tokenize([r["passage"] for r in batch])]
            value = loss(features, None)
            optimizer.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            print(f"step {step}/{total} loss {value.item():.4f}", flush=True)
    seconds = time.time() - started
    peft_model.save_pretrained(args.out)
    print(json.dumps({"steps": step, "seconds": seconds, "seconds_per_step": seconds / max(step, 1), "examples": len(rows)}))


if __name__ == "__main__":
    main()
