// The /v1 API as an application would call it: the official `openai` Python client (from the
// venv `make test` builds with e2e/openai-requirements.txt) against `attune serve` with the
// default models and a token, after a document is uploaded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { root, startServer } from "./harness.mjs";

const python = process.env.ATTUNE_OPENAI_PYTHON ?? path.join(root, "target/openai-venv/bin/python");

function run(command, args) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.once("exit", (code) => resolve({ code, out, err }));
  });
}

test("the openai Python client gets answers, streams, embeddings and typed errors from /v1", { timeout: 600_000 }, async () => {
  const token = "e2e-openai-token";
  const server = await startServer({ token });
  try {
    const form = new FormData();
    const text = await readFile(path.join(root, "backend/tests/fixtures/halueval_24.csv"), "utf8");
    form.append("files", new Blob([text.replaceAll(",", " ")], { type: "text/plain" }), "facts.txt");
    const upload = await fetch(`${server.url}/api/v1/documents`, {
      method: "POST", body: form, headers: { Authorization: `Bearer ${token}` },
    });
    assert.equal(upload.status, 201, await upload.text());
    const { code, out, err } = await run(python, [path.join(root, "e2e/openai_client.py"), server.url, token]);
    assert.equal(code, 0, `openai_client.py failed:\n${out}\n${err}\n${server.log()}`);
    const summary = JSON.parse(out.trim().split("\n").pop());
    assert.equal(summary.models[0], "base");
    assert.ok(summary.citations > 0 && summary.stream_chunks > 0, out);
    assert.deepEqual(Object.keys(summary.errors).sort(), ["bad temperature", "unknown model", "wrong token"]);
    assert.equal(summary.errors["unknown model"].status, 404);
    assert.equal(summary.errors["wrong token"].status, 401);
    assert.ok(summary.stop, `the answer had words to stop at: ${out}`);
    console.log(`openai ${summary.openai}: ${out.trim()}`);
  } finally {
    await server.stop();
  }
});
