#!/usr/bin/env python3
"""Retriever training with hard negatives from the whole corpus, measured on questions people asked
(issue 17, retriever mode): on adapt-proof.py's slice of a shared QA dataset (the gold passages of N
real test questions plus M other passages), `attune train --mode retriever` is run for each variant of
its negative settings and each seed, on the real training triples whose passages are in the slice
and, with --synthetic, on the triples `attune adapt` synthesised from the slice's passages alone; each
tuned retriever is evaluated on the real test questions over the whole slice (`attune eval`: dense,
BM25 and their fusion). The table gives mean ± spread (half the range) over the seeds; --json writes
every figure.

  python3 scripts/negatives-proof.py --dataset ../shared/data/qa/halueval_qa --work /tmp/neg --seeds 0,1,2 \
      --synthetic /tmp/proof/adapt-0/triples.jsonl --json bench/negatives-halueval-cpu.json \
      --variant "in-batch=--hard-negatives 0" --variant "mined once=--hard-negatives 3" \
      --variant "refreshed=--hard-negatives 3 --refresh-negatives-every 50"
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

from proof_common import parse_proof_arguments, proof_arguments, spread

METRICS = ["hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10"]
HERE = os.path.dirname(os.path.abspath(__file__))


def adapt_proof():
    spec = importlib.util.spec_from_file_location("adapt_proof", os.path.join(HERE, "adapt-proof.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(attune, work, models_dir, adapter=None):
    args = [attune, "eval", "--data", os.path.join(work, "slice.jsonl"), "--json", "--models-dir", models_dir]
    if adapter:
        args += ["--retriever-adapter", adapter]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main():
    p = proof_arguments(__doc__)
    p.add_argument("--test-questions", type=int, default=300)
    p.add_argument("--other-passages", type=int, default=700)
    p.add_argument("--variant", action="append", required=True, help="NAME=FLAGS for attune train")
    p.add_argument("--synthetic", help="triples JSONL synthesised from the slice (attune adapt's triples.jsonl)")
    p.add_argument("--no-real", action="store_true", help="train on the synthetic triples only")
    p.add_argument("--json")
    a, seeds, log = parse_proof_arguments(p)
    corpus, questions, real = adapt_proof().slice_dataset(a.dataset, a.work, a.test_questions, a.other_passages, 0)
    variants = [v.split("=", 1) for v in a.variant]
    data = {"synthetic": a.synthetic} if a.synthetic else {}
    if not a.no_real:
        data["real"] = os.path.join(a.work, "real_train.jsonl")
    base = evaluate(a.attune, a.work, a.models_dir)
    rows = {"base": {m: spread([base["retriever"][m]]) for m in METRICS},
            "bm25": {m: spread([base["bm25"][m]]) for m in METRICS},
            "base+bm25": {m: spread([base["hybrid"][m]]) for m in METRICS}}
    runs = {}
    for source, path in data.items():
        for name, flags in variants:
            results, seconds = [], []
            for seed in seeds:
                out = os.path.join(a.work, f"{source}-{name.replace(' ', '_')}-{seed}")
                if not os.path.exists(os.path.join(out, "retriever")):
                    subprocess.run(["rm", "-rf", out], check=True)
                    args = [a.attune, "train", "--data", path, "--corpus",
                            os.path.join(a.work, "slice.corpus.jsonl"), "--out", out, "--mode", "retriever",
                            "--seed", str(seed), "--models-dir", a.models_dir] + shlex.split(flags)
                    print("+", " ".join(args), file=sys.stderr, flush=True)
                    started = time.monotonic()
                    with open(log, "a") as f:
                        subprocess.run(args, check=True, stdout=f, stderr=subprocess.STDOUT)
                    seconds.append(time.monotonic() - started)
                results.append(evaluate(a.attune, a.work, a.models_dir, os.path.join(out, "retriever")))
            key = f"{source}: {name}"
            rows[key] = {m: spread([r["retriever"][m] for r in results]) for m in METRICS}
            rows[f"{key} +bm25"] = {m: spread([r["hybrid"][m] for r in results]) for m in METRICS}
            runs[key] = {"flags": flags, "train_seconds": seconds}
    print(f"{a.dataset}: {questions} real test questions over {corpus} passages; {real} real training triples"
          + (f"; synthetic: {a.synthetic}" if a.synthetic else "") + f"; seeds {seeds}")
    print(f"{'':40}" + "".join(f"{m:>16}" for m in METRICS))
    for name, row in rows.items():
        print(f"{name:40}" + "".join(f"{row[m]['mean']:>9.4f} ±{row[m]['spread']:.4f}" for m in METRICS))
    if a.json:
        figures = {"command": " ".join(sys.argv), "dataset": a.dataset, "corpus_passages": corpus,
                   "test_questions": questions, "real_train_triples": real, "seeds": seeds, "runs": runs,
                   "retrieval": rows}
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
