#!/usr/bin/env python3
"""Crash drill: kills `attune serve` with SIGKILL at random moments of (a) a synthesis run, (b) a
training run and (c) bulk triple edits, restarts it on the same data directory, resumes, and checks
that the database passes PRAGMA integrity_check, no triple is lost or duplicated, and each job ends
with the result of an unbroken run. Prints a table (drill, kills, resumed, lost rows) and writes it
as JSON.

    python3 scripts/drill.py [--kills 10] [--bin target/debug/attune] [--models ./models] [--json drill.json]

Standard library only. Training uses tiny random models with the default models' tokenizers
(`attune tiny-models`); synthesis a stand-in OpenAI-compatible server started here.
"""

import argparse
import http.server
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInLlm(http.server.BaseHTTPRequestHandler):
    """Three numbered questions per passage, and an answer copied from the passage; 60 ms each."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][0]["content"]
        time.sleep(0.06)
        passage = prompt.split("Passage:", 1)[-1].strip().split("\n\nQuestion:")[0]
        words = passage.split()
        if "different questions" in prompt:
            content = "\n".join(f"{i}. What does the passage say about {' '.join(words[i:i + 3])}?" for i in (1, 2, 3))
        else:
            content = " ".join(words[:6])
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        try:
            self.wfile.write(reply)
        except BrokenPipeError:
            pass  # the server was killed while it waited for this reply

    def log_message(self, *args):
        pass


class Server:
    def __init__(self, binary, data, models):
        self.binary, self.data, self.models = binary, data, models
        self.port = free_port()
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "serve", "--addr", f"127.0.0.1:{self.port}", "--data-dir", self.data,
             "--models-dir", self.models, "--dist-dir", os.path.join(self.data, "no-dist"), "--device", "cpu"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.data, "server.log"), "ab"),
            env={**os.environ, "RUST_LOG": "warn"})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.call("GET", "/health")
                return
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"attune serve exited with {self.process.returncode}; see {self.data}/server.log")
                time.sleep(0.05)
        raise SystemExit("attune serve did not answer within 60 s")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1{path}", data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def upload(self, path, name, content):
        boundary = "drill-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1{path}", data=body, method="POST")
        request.add_header("content-type", f"multipart/form-data; boundary={boundary}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())


def query(data, sql):
    db = sqlite3.connect(os.path.join(data, "attune.db"))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def integrity(data):
    return query(data, "PRAGMA integrity_check")[0][0]


def triples(data):
    return query(data, "SELECT id, passage_id, question, answer, status FROM triples ORDER BY id")


def wait(condition, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit("timed out")


DOCUMENT = "\n\n".join(
    f"Section {i}. The drill writes passage number {i} about kettles, harbours and the tides of week {i}; "
    f"readers of passage {i} learn that kettle {i} boils in {i + 2} minutes." for i in range(24)).encode()


def synth_setup(server, llm_url):
    server.call("PUT", "/settings", {"chunk_tokens": 48, "chunk_overlap": 0, "questions_per_passage": 3,
                                     "llm_base_url": llm_url, "llm_model": "stand-in"})
    status, body = server.upload("/documents", "drill.txt", DOCUMENT)
    assert status == 201, body
    return body["files"][0]["document"]["id"]


def synth_result(data):
    return sorted((p, q, a) for _, p, q, a, _ in triples(data))


def run_synthesis(binary, models, llm_url, rng, kills_left, outcome):
    """One synthesis run, killed at random moments (at most `kills_left` times) and resumed after
    each; its triples at the end."""
    data = tempfile.mkdtemp(prefix="attune-drill-synth-")
    server = Server(binary, data, models)
    server.start()
    document = synth_setup(server, llm_url)
    status, run = server.call("POST", "/synth/runs", {"document_id": document,
                                                     "llm": {"type": "open_ai", "base_url": llm_url, "model": "stand-in"}})
    assert status == 202, run
    run_id = run["id"]
    for _ in range(kills_left):
        time.sleep(rng.uniform(0.05, 1.5))
        server.kill()
        outcome["kills"] += 1
        server.start()
        status, run = server.call("GET", f"/synth/runs/{run_id}")
        if run["status"] == "succeeded" and run["report"]["failed_passages"] == 0:
            break  # it had finished before this kill
        status, body = server.call("POST", f"/synth/runs/{run_id}/resume")
        assert status == 202, body
        outcome["resumed"] += 1
    # A resumed run reads "interrupted" until its thread starts: wait for an end.
    wait(lambda: server.call("GET", f"/synth/runs/{run_id}")[1]["status"] in ("succeeded", "failed", "cancelled"))
    server.stop()
    outcome["integrity"] = integrity(data) if outcome.get("integrity", "ok") == "ok" else outcome["integrity"]
    result = synth_result(data)
    shutil.rmtree(data, ignore_errors=True)
    return result


def compare(outcome, unbroken, broken):
    outcome["lost"] = outcome.get("lost", 0) + len(set(unbroken) - set(broken))
    outcome["duplicated"] = outcome.get("duplicated", 0) + len(broken) - len(set(broken))
    outcome["same_result"] = outcome.get("same_result", True) and unbroken == broken
    outcome["rows"] = len(unbroken)


def drill_synthesis(binary, models, kills, llm_url, rng):
    """An unbroken run, then runs killed and resumed until `kills` kills have landed."""
    outcome = {"kills": 0, "resumed": 0}
    unbroken = run_synthesis(binary, models, llm_url, rng, 0, {"kills": 0, "resumed": 0})
    while outcome["kills"] < kills:
        compare(outcome, unbroken, run_synthesis(binary, models, llm_url, rng, kills - outcome["kills"], outcome))
    return outcome


def train_setup(server):
    csv = open(os.path.join(ROOT, "backend/tests/fixtures/halueval_24.csv"), "rb").read()
    status, body = server.upload("/triples/import", "halueval_24.csv", csv)
    assert status == 200, body
    server.call("POST", "/triples/bulk", {"action": "set_status_matching", "matching": {}, "status": "approved"})
    status, run = server.call("POST", "/runs", {
        "mode": "e2e", "hyper": {"max_steps": 60, "epochs": 1000, "batch_size": 2, "top_k": 2, "checkpoint_every": 3,
                                 "max_passage_tokens": 48, "max_answer_tokens": 12, "lr": 0.001, "eval_every": 0}})
    assert status == 202, run
    return run["id"]


def train_result(server, run_id):
    status, metrics = server.call("GET", f"/runs/{run_id}/metrics")
    return [(p["step"], round(p["loss"], 9)) for p in metrics]


def run_training(binary, models, rng, kills_left, outcome):
    data = tempfile.mkdtemp(prefix="attune-drill-train-")
    server = Server(binary, data, models)
    server.start()
    run_id = train_setup(server)
    for _ in range(kills_left):
        time.sleep(rng.uniform(0.3, 3.0))
        server.kill()
        outcome["kills"] += 1
        server.start()
        status, run = server.call("GET", f"/runs/{run_id}")
        if run["status"] == "succeeded":
            break
        if run["status"] in ("queued", "running"):
            continue  # killed before it started: the queue takes it up again by itself
        status, body = server.call("POST", f"/runs/{run_id}/resume")
        assert status == 202, body
        outcome["resumed"] += 1
    run = wait(lambda: (lambda r: r if r["status"] in ("succeeded", "failed", "cancelled") else None)(
        server.call("GET", f"/runs/{run_id}")[1]))
    assert run["status"] == "succeeded", run
    result = train_result(server, run_id)
    server.stop()
    outcome["integrity"] = integrity(data) if outcome.get("integrity", "ok") == "ok" else outcome["integrity"]
    shutil.rmtree(data, ignore_errors=True)
    return result


def drill_training(binary, models, kills, rng):
    outcome = {"kills": 0, "resumed": 0}
    unbroken = run_training(binary, models, rng, 0, {"kills": 0, "resumed": 0})
    while outcome["kills"] < kills:
        compare(outcome, unbroken, run_training(binary, models, rng, kills - outcome["kills"], outcome))
    return outcome


def drill_edits(binary, models, kills, rng):
    """Bulk status changes and edits from four threads, killed mid-stream."""
    data = tempfile.mkdtemp(prefix="attune-drill-edit-")
    server = Server(binary, data, models)
    server.start()
    rows = "\n".join(json.dumps({"question": f"Question {i}?", "passage": f"Passage {i}.", "answer": f"answer {i}"})
                     for i in range(500)).encode()
    status, body = server.upload("/triples/import", "drill.jsonl", rows)
    assert status == 200 and body["imported"] == 500, body
    before = {(q, a0) for _, _, q, a0, _ in triples(data)}
    questions = {q for q, _ in before}
    outcome = {"kills": 0, "resumed": 0, "errors_5xx": 0}
    stop = threading.Event()

    def editor(seed):
        local = random.Random(seed)
        while not stop.is_set():
            try:
                ids = local.sample(range(1, 501), 50)
                status, _ = server.call("POST", "/triples/bulk", {"action": "set_status", "ids": ids,
                                                                  "status": local.choice(["approved", "rejected", "pending"])}, timeout=5)
                one = local.randrange(1, 501)
                status2, triple = server.call("GET", f"/triples/{one}", timeout=5)
                if status2 == 200:
                    status3, _ = server.call("PATCH", f"/triples/{one}", {"version": triple["version"],
                                                                         "answer": f"edited {local.random():.6f}"}, timeout=5)
                    if status3 >= 500:
                        outcome["errors_5xx"] += 1
                if status >= 500:
                    outcome["errors_5xx"] += 1
            except OSError:
                time.sleep(0.02)

    for _ in range(kills):
        threads = [threading.Thread(target=editor, args=(rng.random(),)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.0))
        server.kill()
        outcome["kills"] += 1
        stop.set()
        for t in threads:
            t.join()
        stop.clear()
        server.start()
        outcome["resumed"] += 1
    server.stop()
    after = triples(data)
    outcome["integrity"] = integrity(data)
    ids = [t[0] for t in after]
    outcome.update(rows=len(after), lost=len(questions - {t[2] for t in after}),
                   duplicated=len(ids) - len(set(ids)) + len([t[2] for t in after]) - len({t[2] for t in after}),
                   extra=0, same_result=len(after) == 500)
    shutil.rmtree(data, ignore_errors=True)
    return outcome


def tiny_models(binary, real_models, root):
    made = os.path.join(root, "made")
    subprocess.run([binary, "tiny-models", "--models-dir", real_models, "--out", made], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = os.path.join(root, "models")
    os.makedirs(models)
    os.rename(os.path.join(made, "tiny-retriever"), os.path.join(models, "all-MiniLM-L6-v2"))
    os.rename(os.path.join(made, "tiny-generator"), os.path.join(models, "SmolLM2-135M-Instruct"))
    return models


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/debug/attune"))
    parser.add_argument("--models", default=os.path.join(ROOT, "models"))
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="attune-drill-")
    models = tiny_models(args.bin, args.models, root)
    llm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInLlm)
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    llm_url = f"http://127.0.0.1:{llm.server_address[1]}/v1"
    started = time.time()
    table = {
        "synthesis": drill_synthesis(args.bin, models, args.kills, llm_url, rng),
        "training": drill_training(args.bin, models, args.kills, rng),
        "bulk edits": drill_edits(args.bin, models, args.kills, rng),
    }
    print(f"{'drill':<12} {'kills':>5} {'resumed':>7} {'lost rows':>9} {'duplicated':>10} {'same as unbroken':>16} {'integrity':>9}")
    ok = True
    for name, row in table.items():
        print(f"{name:<12} {row['kills']:>5} {row['resumed']:>7} {row['lost']:>9} {row['duplicated']:>10} "
              f"{str(row['same_result']):>16} {row['integrity']:>9}")
        ok &= row["lost"] == 0 and row["duplicated"] == 0 and row["same_result"] and row["integrity"] == "ok"
        ok &= row.get("errors_5xx", 0) == 0
    print(f"({time.time() - started:.0f} s; bulk edits answered 5xx {table['bulk edits']['errors_5xx']} times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
