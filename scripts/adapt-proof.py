#!/usr/bin/env python3
"""The documents-only path measured on questions people asked (issue 16, part 5): a slice of a shared QA
dataset becomes a folder of documents (the gold passages of N test questions plus M other passages, one
file each); `attune adapt` synthesises triples from those passages alone (the real training questions are
never used), trains, and evaluates on the real test questions; beside it, the base retriever, BM25, and the
ceiling: the same training on the dataset's real training triples whose passages are in the slice. Training
runs for each seed (synthesis once: greedy decoding gives the same triples); the table gives mean ± spread
(half the range) over the seeds. Writes everything under --work and the figures as JSON.

  python3 scripts/adapt-proof.py --dataset ../shared/data/qa/halueval_qa --work /tmp/proof --seeds 0,1,2 \
      --max-passages 150 --budget-minutes 18 --json bench/adapt-halueval.json
"""

import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys

from proof_common import parse_proof_arguments, proof_arguments, spread

METRICS = ["hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10"]


def slice_dataset(dataset, work, test_questions, other_passages, seed):
    rows = [json.loads(line) for line in open(f"{dataset}.jsonl")]
    split = dict(
        line.rstrip("\n").split("\t")[:2] for line in open(f"{dataset}.split.tsv") if not line.startswith("query-id")
    )
    corpus = [json.loads(line)["text"] for line in open(f"{dataset}.corpus.jsonl")]
    rng = random.Random(seed)
    test = rng.sample([r for r in rows if split[r["id"]] == "test"], test_questions)
    gold = sorted({r["passage"] for r in test})
    others = [t for t in corpus if t not in set(gold)]
    rng.shuffle(others)
    passages = gold + others[:other_passages]
    docs = os.path.join(work, "docs")
    shutil.rmtree(docs, ignore_errors=True)
    os.makedirs(docs)
    for i, text in enumerate(passages):
        with open(os.path.join(docs, f"p{i:05d}.txt"), "w") as f:
            f.write(text)
    # The test questions in the shared format, every row a test row, the slice as its corpus.
    pid = lambda t: "p" + hashlib.sha1(t.encode()).hexdigest()[:12]
    with open(f"{work}/slice.jsonl", "w") as f, open(f"{work}/slice.split.tsv", "w") as s:
        s.write("query-id\tsplit\n")
        for i, r in enumerate(test):
            f.write(json.dumps({"id": f"q{i}", "question": r["question"], "passage": r["passage"],
                                "answer": r["answer"], "source": r.get("source", "")}) + "\n")
            s.write(f"q{i}\ttest\n")
    with open(f"{work}/slice.corpus.jsonl", "w") as f:
        for t in passages:
            f.write(json.dumps({"id": pid(t), "text": t}) + "\n")
    in_slice = set(passages)
    real = [r for r in rows if split[r["id"]] == "train" and r["passage"] in in_slice]
    with open(f"{work}/real_train.jsonl", "w") as f:
        for r in real:
            f.write(json.dumps({"question": r["question"], "passage": r["passage"], "answer": r["answer"]}) + "\n")
    return len(passages), len(test), len(real)


def run(args, log):
    print("+", " ".join(args), file=sys.stderr, flush=True)
    with open(log, "a") as out:
        subprocess.run(args, check=True, stdout=out, stderr=subprocess.STDOUT)


def main():
    p = proof_arguments(__doc__)
    p.add_argument("--test-questions", type=int, default=300)
    p.add_argument("--other-passages", type=int, default=700)
    p.add_argument("--max-passages", type=int, default=150, help="passages synthesised from")
    p.add_argument("--questions-per-passage", type=int, default=3)
    p.add_argument("--budget-minutes", type=float, help="synthesis time (adapt's --budget-minutes)")
    p.add_argument("--mode", default="retriever")
    p.add_argument("--ceiling-seeds", help="seeds the ceiling (real training triples) is trained with (default: --seeds)")
    p.add_argument("--ceiling-sample", type=int,
                   help="train the ceiling on this many real training triples drawn at random (as many as synthetic)")
    p.add_argument("--train-flags", default="",
                   help="training flags given to attune adapt and to the ceiling's attune train alike (hard negatives "
                        "are then mined from the slice's passages on both sides), e.g. \"--hard-negatives 3\"")
    p.add_argument("--json")
    a, seeds, log = parse_proof_arguments(p)
    train_flags = shlex.split(a.train_flags)
    corpus, questions, real = slice_dataset(a.dataset, a.work, a.test_questions, a.other_passages, 0)
    synthetic = {}
    for seed in seeds:
        out = os.path.join(a.work, f"adapt-{seed}")
        first = os.path.join(a.work, f"adapt-{seeds[0]}")
        if seed != seeds[0] and not os.path.exists(out):
            # The same synthesis: the first seed's database and stage record, without its training.
            os.makedirs(out)
            shutil.copytree(os.path.join(first, "data"), os.path.join(out, "data"))
            state = json.load(open(os.path.join(first, "adapt.json")))
            state["training"] = None
            json.dump(state, open(os.path.join(out, "adapt.json"), "w"))
        run([a.attune, "adapt", "--documents", os.path.join(a.work, "docs"), "--out", out, "--mode", a.mode,
             "--max-passages", str(a.max_passages), "--questions-per-passage", str(a.questions_per_passage),
             "--test", os.path.join(a.work, "slice.jsonl"), "--skip-answers", "--seed", str(seed),
             "--models-dir", a.models_dir] + train_flags
            + (["--budget-minutes", str(a.budget_minutes)] if a.budget_minutes else []), log)
        synthetic[seed] = json.load(open(os.path.join(out, "report.json")))
    ceiling = {}
    ceiling_seeds = [int(s) for s in a.ceiling_seeds.split(",")] if a.ceiling_seeds else seeds
    for seed in ceiling_seeds:
        real_file, out = os.path.join(a.work, "real_train.jsonl"), os.path.join(a.work, f"real-{seed}")
        if a.ceiling_sample:
            rows = open(real_file).readlines()
            random.Random(1).shuffle(rows)
            real_file, out = os.path.join(a.work, f"real_train_{a.ceiling_sample}.jsonl"), f"{out}-of-{a.ceiling_sample}"
            with open(real_file, "w") as f:
                f.writelines(rows[:a.ceiling_sample])
        if not os.path.exists(os.path.join(out, "retriever")):
            shutil.rmtree(out, ignore_errors=True)
            corpus_flags = ["--corpus", os.path.join(a.work, "slice.corpus.jsonl")] if train_flags else []
            run([a.attune, "train", "--data", real_file, "--out", out, "--mode",
                 a.mode, "--seed", str(seed), "--models-dir", a.models_dir] + corpus_flags + train_flags, log)
        evaluated = subprocess.run([a.attune, "eval", "--data", os.path.join(a.work, "slice.jsonl"),
                                    "--retriever-adapter", os.path.join(out, "retriever"), "--json",
                                    "--models-dir", a.models_dir], check=True, capture_output=True, text=True)
        ceiling[seed] = json.loads(evaluated.stdout)
    first = synthetic[seeds[0]]
    table = {
        "base": {m: spread([first["evaluation"]["retrieval"]["base"][m]]) for m in METRICS},
        "bm25": {m: spread([first["evaluation"]["retrieval"]["bm25"][m]]) for m in METRICS},
        "tuned on synthetic": {m: spread([synthetic[s]["evaluation"]["retrieval"]["tuned"][m] for s in seeds])
                               for m in METRICS},
        "tuned on real train triples": {m: spread([ceiling[s]["retriever"][m] for s in ceiling_seeds])
                                        for m in METRICS},
        "base (attune eval, raw passages)": {m: spread([ceiling[ceiling_seeds[0]]["retriever_base"][m]])
                                             for m in METRICS},
    }
    figures = {
        "command": " ".join(sys.argv), "train_flags": train_flags,
        "dataset": a.dataset, "corpus_passages": corpus, "test_questions": questions,
        "evaluated_questions": first["evaluation"]["questions"], "real_train_triples": min(real, a.ceiling_sample or real), "mode": a.mode,
        "seeds": seeds, "ceiling_seeds": ceiling_seeds, "synthesis": first["synthesis"],
        "training": {s: synthetic[s]["training"] for s in seeds}, "retrieval": table,
    }
    print(f"{a.dataset}: {questions} real test questions over {corpus} passages; synthesis from "
          f"{first['synthesis']['passages_done']} passages kept {first['synthesis']['kept']} triples; "
          f"ceiling: {min(real, a.ceiling_sample or real)} real training triples; seeds {seeds} (ceiling: {ceiling_seeds})")
    print(f"{'':34}" + "".join(f"{m:>16}" for m in METRICS))
    for name, row in table.items():
        print(f"{name:34}" + "".join(f"{row[m]['mean']:>9.4f} ±{row[m]['spread']:.4f}" for m in METRICS))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
