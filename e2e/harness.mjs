// Helpers for Attune's browser tests: start `attune serve` on a free port with a temporary data
// directory, and launch Debian's chromium headless through playwright-core with a fresh profile.
import { spawn } from "node:child_process";
import http from "node:http";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, "..");
export const artifacts = path.join(here, "artifacts");

const bin = process.env.ATTUNE_BIN ?? path.join(root, "target/debug/attune");
const distDir = process.env.ATTUNE_DIST ?? path.join(root, "dist");
const modelsDir = process.env.ATTUNE_MODELS ?? path.join(root, "models");

export async function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Starts the backend; resolves once /api/v1/health answers. */
export async function startServer({ port, dataDir, token } = {}) {
  port ??= await freePort();
  dataDir ??= await mkdtemp(path.join(tmpdir(), "attune-e2e-data-"));
  const args = ["serve", "--addr", `127.0.0.1:${port}`, "--data-dir", dataDir,
    "--models-dir", modelsDir, "--dist-dir", distDir];
  // The token goes in the environment, as the README advises (a command line is visible to `ps`).
  const env = { ...process.env, RUST_LOG: "warn", ...(token ? { ATTUNE_TOKEN: token } : {}) };
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env });
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const url = `http://127.0.0.1:${port}`;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`attune serve exited early (${child.exitCode}):\n${log}`);
    try {
      const response = await fetch(`${url}/api/v1/health`, { headers });
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`attune serve did not answer within 30 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url, port, dataDir, log: () => log,
    /** Stops with SIGTERM (graceful shutdown) and waits for the exit code. */
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

/** Launches chromium headless with a fresh profile folder, removed on close. */
export async function launchBrowser({ viewport = { width: 1280, height: 800 } } = {}) {
  const profile = await mkdtemp(path.join(tmpdir(), "attune-e2e-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const errors = [];
  context.on("weberror", (e) => errors.push(String(e.error())));
  return {
    context,
    errors,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name) {
  await mkdir(artifacts, { recursive: true });
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

/** A stand-in OpenAI-compatible server on a free port: `answer(prompt)` as the reply to each
 * chat completion, after `delayMs`. */
export function standInLlm(delayMs, answer) {
  return new Promise((resolve) => {
    const s = http.createServer((request, response) => {
      let body = "";
      request.on("data", (d) => (body += d));
      request.on("end", () => {
        const prompt = JSON.parse(body).messages[0].content;
        setTimeout(() => {
          response.setHeader("content-type", "application/json");
          response.end(JSON.stringify({ choices: [{ message: { role: "assistant", content: answer(prompt) } }] }));
        }, delayMs);
      });
    });
    s.listen(0, "127.0.0.1", () => resolve(s));
  });
}
