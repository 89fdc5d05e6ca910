#!/usr/bin/env python3
"""Hybrid retrieval's fusion, chosen on held-out training questions and measured on test ones: from the
rankings `attune eval --rankings FILE` writes (each question's dense and BM25 candidates with their
scores), the dense weight of the convex combination of min-max normalised scores (`rag/hybrid.rs`) is
swept on the dev questions — training rows the tuned retriever never saw (all but the first
--train-triples) — and the weight with the best mean MRR@10 over every (dataset, retriever) dev set
is reported on the test questions beside dense alone, BM25 alone and reciprocal rank fusion (k = 60,
Attune's fusion before). Python fuses here as the Rust code does; `--check WEIGHT=EVAL_JSON` compares
the result with what `attune eval` itself reported for its hybrid rows at that weight.

  attune eval --data ../shared/data/qa/halueval_qa.jsonl --retriever-adapter RUN/retriever \\
      --rankings /tmp/f/halu-test.jsonl --json --models-dir models > /tmp/f/halu-test.json
  attune eval --data ../shared/data/qa/halueval_qa.jsonl --split train --retriever-adapter RUN/retriever \\
      --rankings /tmp/f/halu-train.jsonl --json --models-dir models
  (the same for pubmedqa, base retriever only), then
  python3 scripts/fusion-proof.py --json bench/hybrid-fusion-cpu.json \\
      --set halueval=../shared/data/qa/halueval_qa:1000:/tmp/f/halu-test.jsonl,/tmp/f/halu-train.jsonl \\
      --set pubmedqa=../shared/data/qa/pubmedqa:0:/tmp/f/pub-test.jsonl,/tmp/f/pub-train.jsonl
"""

import argparse
import json
import statistics
import sys

DEPTH = 100
WEIGHTS = [round(0.05 * i, 2) for i in range(1, 20)]


def parts(dataset, train_triples):
    """Each row of the dataset, in order, as (question, passage, part): "test", "dev" (training rows
    after the first `train_triples`) or "seen" (training rows the tuned retriever trained on)."""
    rows = [json.loads(line) for line in open(f"{dataset}.jsonl") if line.strip()]
    split = dict(line.rstrip("\n").split("\t")[:2] for line in list(open(f"{dataset}.split.tsv"))[1:])
    out, train_seen = [], 0
    for r in rows:
        if split.get(r["id"]) == "test":
            out.append((norm(r["question"]), norm(r["passage"]), "test"))
        elif split.get(r["id"]) == "train":
            out.append((norm(r["question"]), norm(r["passage"]), "seen" if train_seen < train_triples else "dev"))
            train_seen += 1
    return out


def norm(text):
    """Whitespace as `attune` reads texts (trimmed, runs of spaces as one) for matching."""
    return " ".join(text.split())


def corpus_texts(dataset):
    return [norm(json.loads(line)["text"]) for line in open(f"{dataset}.corpus.jsonl") if line.strip()]


def minmax_convex(dense, lexical, weight):
    fused = {}
    for ranking, w in ((dense[:DEPTH], weight), (lexical[:DEPTH], 1.0 - weight)):
        if not ranking:
            continue
        scores = [s for _, s in ranking]
        low, high = min(scores), max(scores)
        for p, s in ranking:
            fused[p] = fused.get(p, 0.0) + w * ((s - low) / (high - low) if high > low else 1.0)
    return sorted(fused, key=lambda p: (-fused[p], p))


def rrf(dense, lexical, k=60.0):
    fused = {}
    for ranking in (dense[:DEPTH], lexical[:DEPTH]):
        for r, (p, _) in enumerate(ranking):
            fused[p] = fused.get(p, 0.0) + 1.0 / (k + r + 1)
    return sorted(fused, key=lambda p: (-fused[p], p))


def metrics(rows, rank):
    hit1 = mrr = hit10 = 0.0
    for row in rows:
        top = rank(row)[:10]
        gold = row["gold"]
        hit1 += top[:1] == [gold]
        hit10 += gold in top
        mrr += next((1.0 / (i + 1) for i, p in enumerate(top) if p == gold), 0.0)
    n = len(rows)
    return {"hit@1": hit1 / n, "hit@10": hit10 / n, "mrr@10": mrr / n}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", required=True,
                   help="NAME=DATASET:TRAIN_TRIPLES:RANKINGS[,RANKINGS...] (DATASET without extension)")
    p.add_argument("--check", action="append", default=[],
                   help="NAME=EVAL_JSON: attune eval's report on NAME's test questions, to compare")
    p.add_argument("--json")
    a = p.parse_args()

    sets = {}  # (dataset, retriever) -> {"dev": rows, "test": rows}
    for spec in a.set:
        name, rest = spec.split("=", 1)
        dataset, train_triples, files = rest.split(":", 2)
        rows, corpus = parts(dataset, int(train_triples)), corpus_texts(dataset)
        for path in files.split(","):
            # A rankings file holds some of the dataset's rows in their order: match each line
            # to the next row with its question and gold passage.
            at = 0
            for line in open(path):
                row = json.loads(line)
                gold_text = corpus[row["gold"]] if row["gold"] < len(corpus) else None
                while at < len(rows) and (rows[at][0], rows[at][1]) != (norm(row["question"]), gold_text):
                    at += 1
                if at == len(rows):
                    sys.exit(f"{path}: a line matches no row of {dataset} in order: {row['question']!r}")
                part = rows[at][2]
                at += 1
                if part == "seen":
                    continue
                for retriever in ("base", "tuned"):
                    if retriever in row:
                        entry = {"gold": row["gold"], "dense": row[retriever], "bm25": row["bm25"]}
                        sets.setdefault((name, retriever), {"dev": [], "test": []})[part].append(entry)
    sets = {k: v for k, v in sets.items() if v["dev"] and v["test"]}
    if not sets:
        sys.exit("no set has both dev and test questions")

    sweep = {}
    for weight in WEIGHTS:
        per_set = {f"{n} {r}": metrics(v["dev"], lambda row: minmax_convex(row["dense"], row["bm25"], weight))
                   for (n, r), v in sets.items()}
        sweep[weight] = {"mean mrr@10": statistics.fmean(m["mrr@10"] for m in per_set.values()), "sets": per_set}
    best = max(WEIGHTS, key=lambda w: (sweep[w]["mean mrr@10"], -abs(w - 0.5)))
    print("dev MRR@10 by dense weight (mean over " + ", ".join(f"{n} {r}" for n, r in sets) + "):")
    print("  " + "  ".join(f"{w:.2f}:{sweep[w]['mean mrr@10']:.4f}" for w in WEIGHTS))
    print(f"chosen dense weight: {best}\n")

    methods = {
        "dense": lambda row: [p for p, _ in row["dense"]],
        "bm25": lambda row: [p for p, _ in row["bm25"]],
        "hybrid rrf (before)": lambda row: rrf(row["dense"], row["bm25"]),
        f"hybrid convex {best}": lambda row: minmax_convex(row["dense"], row["bm25"], best),
    }
    results = {}
    print(f"{'':34}{'questions':>10}{'hit@1':>8}{'hit@10':>8}{'MRR@10':>8}")
    for (name, retriever), v in sets.items():
        for part in ("dev", "test"):
            for method, rank in methods.items():
                m = metrics(v[part], rank)
                results.setdefault(f"{name} {retriever}", {}).setdefault(part, {})[method] = m
                print(f"{name + ' ' + retriever + ' ' + part + ' ' + method:34}{len(v[part]):>10}"
                      f"{m['hit@1']:>8.4f}{m['hit@10']:>8.4f}{m['mrr@10']:>8.4f}")
    checks = {}
    for spec in a.check:
        name, path = spec.split("=", 1)
        report = json.load(open(path))
        for retriever, key in (("tuned", "hybrid"), ("base", "hybrid_base"), ("base", "hybrid")):
            ours = results.get(f"{name} {retriever}", {}).get("test", {}).get(f"hybrid convex {best}")
            if ours and report.get(key):
                checks[f"{name} {retriever} ({key})"] = {"attune eval": report[key], "this script": ours}
                print(f"check {name} {retriever}: attune eval hit@1 {report[key].get('hit@1')}, "
                      f"MRR@10 {report[key].get('mrr@10')}; here {ours['hit@1']:.4f}, {ours['mrr@10']:.4f}")
                break
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "depth": DEPTH, "chosen_dense_weight": best,
                       "dev_sweep": sweep, "results": results, "checks": checks}, f, indent=1)


if __name__ == "__main__":
    main()
