#!/usr/bin/env python3
"""Generators trained among distractors (RAFT), measured on questions people asked (issue 17): for each
variant (generator-mode flags) and each seed, `attune train --mode generator` on the first N training
triples of a shared QA dataset (distractors mined from its whole corpus by the base retriever), then
`attune eval` answers the real test questions with the base retriever's top 1 and top 3 passages of
the whole corpus in the prompt, base generator and tuned. The table gives exact match and token F1,
mean ± spread (half the range) over the seeds, and the mean optimiser step time; --json keeps every
figure.

  python3 scripts/raft-proof.py --dataset ../shared/data/qa/halueval_qa --work /tmp/raft \\
      --train-triples 1000 --test-questions 300 --seeds 0 --json bench/raft-halueval-cpu.json \\
      --variant "gold-trained=" \\
      --variant "RAFT-trained=--distractors 2 --oracle-fraction 0.8"

Each run's folder keeps its adapters and its evaluation (eval-N.json), so a second call with the
same work folder continues where the first stopped.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys

from proof_common import kept_report, parse_proof_arguments, proof_arguments, spread, step_seconds, write_training_triples

ANSWER_METRICS = ["exact_match", "f1"]


def run_logged(args, log):
    print("+", " ".join(args), file=sys.stderr, flush=True)
    with open(log, "a") as f:
        subprocess.run(args, check=True, stdout=f, stderr=subprocess.STDOUT)


def evaluate(a, out):
    """`attune eval`'s JSON for the run's generator adapter (with the base generator beside it),
    kept in the run's folder."""
    args = [a.attune, "eval", "--data", f"{a.dataset}.jsonl", "--json", "--models-dir", a.models_dir,
            "--generator", "default", "--generator-adapter", os.path.join(out, "generator"),
            "--passages-per-prompt", "1,3", "--retrieval", a.retrieval,
            "--predictions", os.path.join(out, "predictions.jsonl")]
    if a.test_questions:
        args += ["--max-questions", str(a.test_questions)]
    return kept_report(os.path.join(out, f"eval-{a.test_questions or 'all'}.json"), args)


def answers(report, generator, passages):
    rows = [r for r in report["generation"] if r["generator"] == generator and r["passages"] == passages]
    if len(rows) != 1:
        raise SystemExit(f"the evaluation has {len(rows)} rows for {generator} with {passages} passages")
    return {m: rows[0][m] for m in ANSWER_METRICS}


def main():
    p = proof_arguments(__doc__)
    p.add_argument("--train-triples", type=int, default=1000)
    p.add_argument("--test-questions", type=int, help="the first N test questions (default: all)")
    p.add_argument("--retrieval", default="dense", help="which ranking fills the prompts: dense, bm25 or hybrid")
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=FLAGS for attune train --mode generator (empty: the gold passage alone)")
    p.add_argument("--json")
    a, seeds, log = parse_proof_arguments(p)
    train_file = os.path.join(a.work, "train.jsonl")
    train = write_training_triples(a.dataset, a.train_triples, train_file)
    table, runs, base_reports, retrieval = {}, {}, [], None
    for name, flags in (v.split("=", 1) for v in a.variant):
        flags = shlex.split(flags)
        per_passages = {1: [], 3: []}
        seconds = []
        for seed in seeds:
            out = os.path.join(a.work, f"{name.replace(' ', '_')}-{seed}")
            if not os.path.exists(os.path.join(out, "generator")):
                subprocess.run(["rm", "-rf", out], check=True)
                run_logged([a.attune, "train", "--data", train_file, "--corpus", f"{a.dataset}.corpus.jsonl",
                            "--out", out, "--mode", "generator", "--seed", str(seed),
                            "--models-dir", a.models_dir] + flags, log)
            seconds.append(step_seconds(out))
            report = evaluate(a, out)
            base_reports.append(report)
            retrieval = retrieval or {"dense": report["retriever"], "bm25": report["bm25"], "hybrid": report["hybrid"],
                                      "questions": report["questions"], "corpus": report["corpus"]}
            for passages in per_passages:
                per_passages[passages].append(answers(report, "tuned", passages))
        for passages, metrics in per_passages.items():
            table[f"{name}, top {passages}"] = {m: spread([x[m] for x in metrics]) for m in ANSWER_METRICS}
        runs[name] = {"flags": flags, "step_seconds": seconds}
    # The base generator is evaluated beside every tuned one: the same greedy answers each time.
    for passages in (3, 1):  # each put first: top 1, then top 3
        values = [answers(r, "base", passages) for r in base_reports]
        table = {f"base generator, top {passages}": {m: spread([v[m] for v in values[:1]]) for m in ANSWER_METRICS},
                 **table}
        runs.setdefault("base generator", {})[f"top {passages} identical across evaluations"] = all(
            v == values[0] for v in values)
    print(f"{a.dataset}: the first {retrieval['questions']} real test questions, passages retrieved "
          f"({a.retrieval}) from all {retrieval['corpus']}; trained on the first {len(train)} training triples; "
          f"seeds {seeds}; retrieval hit@1 {retrieval[a.retrieval]['hit@1']:.3f}, hit@3 {retrieval[a.retrieval]['hit@3']:.3f}")
    print(f"{'':36}" + "".join(f"{m:>19}" for m in ANSWER_METRICS) + "   step s")
    for name, row in table.items():
        variant = runs.get(name.rsplit(", top", 1)[0], {})
        times = [s for s in variant.get("step_seconds", []) if s is not None]
        step = f"{statistics.fmean(times):9.2f}" if times else ""
        print(f"{name:36}" + "".join(f"{row[m]['mean']:>12.4f} ±{row[m]['spread']:.4f}" for m in ANSWER_METRICS) + step)
    if a.json:
        figures = {"command": " ".join(sys.argv), "dataset": a.dataset, "train_triples": len(train), "seeds": seeds,
                   "retrieval_feeding_prompts": a.retrieval, "retrieval": retrieval, "runs": runs, "answers": table,
                   "machine": os.uname().machine, "cpus": os.cpu_count()}
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
