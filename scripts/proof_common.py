"""What the proof scripts (`adapt-proof.py`, `negatives-proof.py`, `retrieval-loop-proof.py`, `raft-proof.py`)
share: their common arguments, the first training triples of a shared QA dataset, a run's mean step time,
an `attune` report kept on disk, and mean ± spread."""

import argparse
import json
import os
import statistics
import subprocess
import sys


def proof_arguments(doc):
    """A parser with the arguments every proof script takes (the dataset, the work folder, the
    binary, the models and the seeds); each script adds its own."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--dataset", required=True, help="path without extension, e.g. ../shared/data/qa/halueval_qa")
    p.add_argument("--work", required=True)
    p.add_argument("--attune", default="target/release/attune")
    p.add_argument("--models-dir", default="./models")
    p.add_argument("--seeds", default="0,1,2")
    return p


def parse_proof_arguments(p):
    """The parsed arguments, the seeds as numbers and the work folder's log file (the folder made
    if missing)."""
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    return a, [int(s) for s in a.seeds.split(",")], os.path.join(a.work, "log.txt")


def spread(values):
    """Mean and spread (half the range) of one figure over the seeds."""
    return {"mean": statistics.fmean(values), "spread": (max(values) - min(values)) / 2, "values": values}


def write_training_triples(dataset, count, path):
    """The first `count` training rows of `dataset` (the shared format, its split file) as triples
    JSONL at `path`; returns them."""
    rows = [json.loads(line) for line in open(f"{dataset}.jsonl")]
    split = dict(line.rstrip("\n").split("\t")[:2] for line in open(f"{dataset}.split.tsv")
                 if not line.startswith("query-id"))
    train = [r for r in rows if split[r["id"]] == "train"][:count]
    with open(path, "w") as f:
        for r in train:
            f.write(json.dumps({"question": r["question"], "passage": r["passage"], "answer": r["answer"]}) + "\n")
    return train


def step_seconds(out):
    """Mean step time over the run's steps after the first (warm-up), index refreshes included."""
    times = []
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            point = json.loads(line)
            if "step_seconds" in point:
                times.append(point["step_seconds"] + (point.get("refresh_seconds") or 0.0))
    times = times[1:] or times
    return statistics.fmean(times) if times else None


def kept_report(kept, args):
    """The JSON `args` print, read from `kept` when an earlier call wrote it there (written aside
    and renamed into place, so a stopped call leaves nothing half-written)."""
    if os.path.exists(kept):
        with open(kept) as f:
            return json.load(f)
    print("+", " ".join(args), file=sys.stderr, flush=True)
    report = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    with open(kept + ".partial", "w") as f:
        json.dump(report, f)
    os.rename(kept + ".partial", kept)
    return report
