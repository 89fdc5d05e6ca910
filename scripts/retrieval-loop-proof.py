#!/usr/bin/env python3
"""Retrieval in the training loop, measured on questions people asked (issue 17): for each variant
(a training mode and its flags) and each seed, `attune train` on the first N training triples of a
shared QA dataset, its negatives mined from the dataset's whole corpus; each tuned retriever is
evaluated by `attune eval` on the real test questions over every passage of the corpus, dense, BM25
and hybrid (the two fused, `rag/hybrid.rs`). The table gives mean ± spread (half the range) over the
seeds, the mean optimiser step time (index refreshes included) and, with --json, every figure.

  python3 scripts/retrieval-loop-proof.py --dataset ../shared/data/qa/halueval_qa --work /tmp/loop \\
      --train-triples 1000 --seeds 0,1,2 --json bench/retrieval-loop-halueval-cpu.json \\
      --variant "retriever-only=retriever" \\
      --variant "retriever, refreshed negatives=retriever --hard-negatives 3 --refresh-negatives-every 50" \\
      --variant "e2e batch=e2e --max-steps 40" \\
      --variant "e2e corpus contrastive+lsr=e2e --max-steps 40 --hard-negatives 3 --candidates corpus \\
                 --retriever-loss contrastive+lsr"

With --no-eval it trains only and compares step times (issue 17's cost goal: an e2e step with corpus
candidates against today's, an index refresh spread over --refresh-interval steps):

  python3 scripts/retrieval-loop-proof.py --dataset ../shared/data/qa/halueval_qa --work /tmp/cost --seeds 0 \
      --no-eval --json bench/retrieval-loop-cost-cpu.json \
      --variant "e2e batch=e2e --max-steps 6" \
      --variant "e2e corpus contrastive+lsr=e2e --max-steps 6 --hard-negatives 3 --candidates corpus \
                 --retriever-loss contrastive+lsr --refresh-negatives-every 3"
"""

import json
import os
import shlex
import statistics
import subprocess
import sys

from proof_common import kept_report, parse_proof_arguments, proof_arguments, spread, step_seconds, write_training_triples

METRICS = ["hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10"]


def evaluate(a, adapter=None):
    """`attune eval`'s JSON, kept beside the adapter (or in the work folder for the base model) so
    a second call with the same questions reads it instead of evaluating again."""
    args = [a.attune, "eval", "--data", f"{a.dataset}.jsonl", "--json", "--models-dir", a.models_dir]
    if a.test_questions:
        args += ["--max-questions", str(a.test_questions)]
    if adapter:
        args += ["--retriever-adapter", adapter, "--skip-base"]
    kept = os.path.join(os.path.dirname(adapter) if adapter else a.work, f"eval-{a.test_questions or 'all'}.json")
    return kept_report(kept, args)


def train_variant(a, name, spec, seed, train_file, log):
    mode, *flags = shlex.split(spec)
    out = os.path.join(a.work, f"{name.replace(' ', '_').replace(',', '')}-{seed}")
    if not os.path.exists(os.path.join(out, "retriever")):
        subprocess.run(["rm", "-rf", out], check=True)
        args = [a.attune, "train", "--data", train_file, "--corpus", f"{a.dataset}.corpus.jsonl",
                "--out", out, "--mode", mode, "--seed", str(seed), "--models-dir", a.models_dir] + flags
        print("+", " ".join(args), file=sys.stderr, flush=True)
        with open(log, "a") as f:
            subprocess.run(args, check=True, stdout=f, stderr=subprocess.STDOUT)
    return mode, flags, out


def step_and_refresh_seconds(out):
    """Mean step time after the first (warm-up), index refreshes apart; and each refresh's time."""
    steps, refreshes = [], []
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            point = json.loads(line)
            if "step_seconds" in point:
                steps.append(point["step_seconds"])
                if point.get("refresh_seconds") is not None:
                    refreshes.append(point["refresh_seconds"])
    return statistics.fmean(steps[1:] or steps), refreshes


def cost_only(a, train_file, seeds):
    """Step times of each variant, an index refresh's time spread over --refresh-interval steps,
    and each one's ratio to the first variant's."""
    log = os.path.join(a.work, "log.txt")
    runs = {}
    for name, spec in (v.split("=", 1) for v in a.variant):
        steps, refreshes = [], []
        for seed in seeds:
            mode, flags, out = train_variant(a, name, spec, seed, train_file, log)
            step, refresh = step_and_refresh_seconds(out)
            steps.append(step)
            refreshes += refresh
        refresh = statistics.fmean(refreshes) if refreshes else 0.0
        mean = statistics.fmean(steps) + refresh / a.refresh_interval
        runs[name] = {"mode": mode, "flags": flags, "step_seconds": steps, "refresh_seconds": refreshes,
                      "refresh_interval": a.refresh_interval, "mean_with_refresh": mean}
    reference = next(iter(runs.values()))["mean_with_refresh"]
    print(f"{'':44}{'step s':>10}{'refresh s':>11}{'per step':>10}{'ratio':>8}")
    for name, run in runs.items():
        run["ratio"] = run["mean_with_refresh"] / reference
        refresh = statistics.fmean(run["refresh_seconds"]) if run["refresh_seconds"] else 0.0
        print(f"{name:44}{statistics.fmean(run['step_seconds']):>10.2f}{refresh:>11.1f}"
              f"{run['mean_with_refresh']:>10.2f}{run['ratio']:>8.2f}")
    if a.json:
        figures = {"command": " ".join(sys.argv), "dataset": a.dataset, "seeds": seeds, "runs": runs,
                   "machine": os.uname().machine, "cpus": os.cpu_count()}
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


def main():
    p = proof_arguments(__doc__)
    p.add_argument("--train-triples", type=int, default=1000)
    p.add_argument("--test-questions", type=int, help="the first N test questions (default: all)")
    p.add_argument("--variant", action="append", required=True, help="NAME=MODE [FLAGS] for attune train")
    p.add_argument("--no-eval", action="store_true",
                   help="train only and compare step times (the first variant is the reference of the ratio)")
    p.add_argument("--refresh-interval", type=int, default=50,
                   help="with --no-eval: steps between index refreshes that a refresh's time is spread over")
    p.add_argument("--json")
    a, seeds, log = parse_proof_arguments(p)
    train_file = os.path.join(a.work, "train.jsonl")
    train = write_training_triples(a.dataset, a.train_triples, train_file)
    if a.no_eval:
        return cost_only(a, train_file, seeds)
    base = evaluate(a)
    table = {"base": {m: spread([base["retriever"][m]]) for m in METRICS},
             "bm25": {m: spread([base["bm25"][m]]) for m in METRICS},
             "base hybrid": {m: spread([base["hybrid"][m]]) for m in METRICS}}
    runs = {}
    for name, spec in (v.split("=", 1) for v in a.variant):
        results, seconds = [], []
        for seed in seeds:
            mode, flags, out = train_variant(a, name, spec, seed, train_file, log)
            seconds.append(step_seconds(out))
            results.append(evaluate(a, os.path.join(out, "retriever")))
        table[name] = {m: spread([r["retriever"][m] for r in results]) for m in METRICS}
        table[f"{name} hybrid"] = {m: spread([r["hybrid"][m] for r in results]) for m in METRICS}
        runs[name] = {"mode": mode, "flags": flags, "step_seconds": seconds}
    print(f"{a.dataset}: {base['questions']} real test questions over {base['corpus']} passages; "
          f"trained on the first {len(train)} training triples; seeds {seeds}")
    print(f"{'':44}" + "".join(f"{m:>17}" for m in METRICS) + "   step s")
    for name, row in table.items():
        variant = runs.get(name.removesuffix(" hybrid")) if not name.endswith(" hybrid") else None
        times = [s for s in (variant or {}).get("step_seconds", []) if s is not None]
        step = f"{statistics.fmean(times):9.2f}" if times else ""
        print(f"{name:44}" + "".join(f"{row[m]['mean']:>10.4f} ±{row[m]['spread']:.4f}" for m in METRICS) + step)
    if a.json:
        figures = {"command": " ".join(sys.argv), "dataset": a.dataset, "corpus_passages": base["corpus"],
                   "test_questions": base["questions"], "train_triples": len(train), "seeds": seeds,
                   "runs": runs, "retrieval": table,
                   "machine": os.uname().machine, "cpus": os.cpu_count()}
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
