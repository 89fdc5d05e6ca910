// Train, Evaluate and Chat in a real browser with the default models: a quick run started from
// the Train page whose loss chart receives points until the run finishes, its evaluation against
// the base models, then questions in Chat (citations first, then streamed text; side by side;
// stop). Prints the time from Start to the first chart point and the chat's first-token time and
// tokens/s; screenshots go to e2e/artifacts/.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { launchBrowser, screenshot, startServer } from "./harness.mjs";

const fixtures = path.resolve(import.meta.dirname, "../backend/tests/fixtures");

let server;
let browser;

async function api(method, route, body) {
  const response = await fetch(`${server.url}/api/v1${route}`, {
    method,
    headers: body && !(body instanceof FormData) ? { "content-type": "application/json" } : {},
    body: body instanceof FormData ? body : body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${route}: ${response.status} ${text}`);
  return JSON.parse(text);
}

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  // 24 approved triples to train on, and a document to chat with.
  const triples = new FormData();
  triples.append("file", new Blob([await readFile(path.join(fixtures, "halueval_24.csv"))]), "halueval_24.csv");
  assert.equal((await api("POST", "/triples/import", triples)).imported, 24);
  await api("POST", "/triples/bulk", { action: "set_status_matching", matching: {}, status: "approved" });
  const document = new FormData();
  const text = (await readFile(path.join(fixtures, "halueval_24.csv"), "utf8")).replaceAll(",", " ");
  document.append("files", new Blob([text]), "notes.txt");
  await api("POST", "/documents", document);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a quick run's chart fills live, then Evaluate and Chat use the tuned models", { timeout: 900_000 }, async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/train`);
  await page.getByTestId("approved-count").getByText(/24 approved triples/).waitFor();
  await page.getByRole("button", { name: "Quick (CPU)" }).click();
  // Every setting is on the form with its explanation.
  await page.getByText("Settings").click();
  await page.getByText("Candidates the generator's likelihood is marginalised over (e2e).").waitFor();

  const started = Date.now();
  await page.getByTestId("start-run").click();
  await page.waitForSelector('[data-testid="loss-chart"]:not([data-points="0"])', { timeout: 300_000 });
  const firstPoint = (Date.now() - started) / 1000;
  console.log(`figure: Start → first chart point ${firstPoint.toFixed(1)} s`);
  await page.waitForSelector('[data-testid="run-status"]:text("succeeded")', { timeout: 600_000 });
  const points = await page.getByTestId("loss-chart").getAttribute("data-points");
  assert.equal(points, "6", "one point per step of the quick preset");
  assert.equal(await page.getByTestId("lr-chart").getAttribute("data-points"), "6");
  assert.match(await page.getByTestId("run-step").innerText(), /6 \/ 6/);
  assert.equal(await page.locator(".chart path.line.s-retriever").count(), 1, "e2e runs chart both losses");
  assert.match(await page.getByRole("table", { name: "Runs" }).innerText(), /succeeded/);

  // Export the tuned generator as GGUF: the page says where it went; the same export twice is refused.
  await page.getByLabel("Export format").selectOption("gguf:q8_0");
  await page.getByTestId("export-run").click();
  const done = await page.getByTestId("export-done").innerText({ timeout: 120_000 });
  assert.match(done, /exports\/run-\d+-gguf-q8_0 \(2 files, \d+ MB\)/, done);
  await page.getByTestId("export-run").click();
  await page.getByTestId("run-export").getByRole("alert").getByText(/already/).waitFor();
  await screenshot(page, "train");

  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Evaluate" }).click();
  const form = page.getByRole("form", { name: "New evaluation" });
  await form.getByRole("checkbox").first().waitFor();
  assert.ok(await form.getByRole("checkbox").first().isChecked(), "the latest run is picked");
  await form.getByPlaceholder("all").fill("4");
  await page.getByTestId("start-eval").click();
  await page.getByTestId("metrics-table").waitFor({ timeout: 600_000 });
  const table = await page.getByTestId("metrics-table").innerText();
  for (const row of ["hit@1", "hit@3", "hit@5", "hit@10", "MRR@10", "nDCG@10", "Exact match", "F1"]) {
    assert.ok(table.includes(row), `${row} in ${table}`);
  }
  assert.match(table, /base/);
  assert.match(table, /Δ e2e run 1/);
  // Dense, BM25 and hybrid search of the same questions, for base and tuned.
  const methods = await page.getByTestId("methods-table").innerText();
  for (const row of ["BM25", "base, dense", "base, hybrid (dense + BM25)", "e2e run 1, dense", "e2e run 1, hybrid (dense + BM25)"]) {
    assert.ok(methods.includes(row), `${row} in ${methods}`);
  }
  // Each evaluation has its own address, its figures their intervals, ranks their meaning.
  assert.match(page.url(), /\/evaluate\/\d+$/);
  assert.ok((await page.getByTestId("interval").count()) > 0, "intervals beside the figures");
  assert.match(await page.getByTestId("eval-note").innerText(), /95% bootstrap interval/);
  const item = page.locator(".eval-item").first();
  await item.locator("summary").click();
  await item.getByText("Gold answer:").waitFor();
  assert.match(await item.locator("summary").innerText(), /gold passage (at #\d+|not in the top 10)/);
  const address = page.url();
  await page.goto(address);
  await page.getByTestId("metrics-table").waitFor();
  assert.ok((await item.locator(".system").count()) === 2, "base and tuned answers side by side");
  await screenshot(page, "evaluate");

  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Chat" }).click();
  await page.getByLabel("Models").locator("option", { hasText: "(tuned)" }).waitFor({ state: "attached" });
  assert.match(await page.getByLabel("Models").inputValue(), /^run:/, "the tuned pair is the default");
  assert.equal(await page.getByTestId("chat-retrieval").inputValue(), "hybrid", "hybrid search by default");
  const input = page.getByTestId("chat-input");
  await input.fill("What was the name of the band?");
  const asked = Date.now();
  await page.getByTestId("chat-send").click();
  const answer = page.getByTestId("answer").last();
  await answer.getByTestId("citation").first().waitFor({ timeout: 120_000 });
  const passagesAfter = (Date.now() - asked) / 1000;
  await answer.locator('[data-testid="answer-text"]:not(:empty)').waitFor({ timeout: 120_000 });
  await page.waitForSelector('[data-testid="answer"][data-state="done"]', { timeout: 300_000 });
  const stats = await answer.getByTestId("chat-stats").innerText();
  console.log(`figure: first chat question (loads the tuned pair, builds its index): passages after ${passagesAfter.toFixed(2)} s in the browser; server: ${stats}`);
  assert.match(stats, /first token after [\d.]+ s · [\d.]+ tokens\/s/);
  assert.ok((await answer.getByTestId("citation").count()) === 5);
  await answer.getByTestId("citation").first().locator("summary").click();
  await screenshot(page, "chat");

  // A second question to the same pair: models and index are warm.
  await input.fill("Which country is it from?");
  await page.getByTestId("chat-send").click();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="answer"][data-state="done"]').length === 2, null, { timeout: 300_000 });
  console.log(`figure: warm chat question: ${await page.getByTestId("chat-stats").last().innerText()}`);

  // Side by side: the tuned and the base pair answer the same question.
  await page.getByTestId("side-by-side").check();
  await input.fill("Who wrote it?");
  await page.getByTestId("chat-send").click();
  await page.waitForFunction(() => document.querySelectorAll('.turn:last-child [data-testid="answer"][data-state="done"]').length === 2, null, { timeout: 300_000 });
  for (const stats of await page.locator('.turn:last-child [data-testid="chat-stats"]').allInnerTexts()) {
    console.log(`figure: side by side (tuned, then base; the base pair loads first): ${stats}`);
  }
  await screenshot(page, "chat-side-by-side");

  // Stop: the answer ends early and says so.
  await page.getByTestId("side-by-side").uncheck();
  await input.fill("Write a very long essay about every passage, in great detail.");
  await page.getByTestId("chat-send").click();
  await page.locator('.turn:last-child [data-testid="answer-text"]:not(:empty)').waitFor({ timeout: 120_000 });
  await page.getByTestId("chat-stop").click();
  await page.waitForSelector('.turn:last-child [data-testid="answer"][data-state="stopped"]', { timeout: 60_000 });
  // Answers are Markdown; a short token limit says the answer stopped at it.
  assert.ok((await page.getByTestId("answer-text").first().innerHTML()).includes("<p>"), "rendered as Markdown");
  await page.getByText("Generation settings").click();
  await page.getByTestId("chat-max-tokens").fill("4");
  await page.getByTestId("chat-max-tokens").press("Tab");
  await input.fill("Describe the band in detail.");
  await page.getByTestId("chat-send").click();
  await page.waitForSelector('.turn:last-child [data-testid="answer"][data-state="done"]', { timeout: 120_000 });
  assert.match(await page.locator(".turn:last-child").getByTestId("answer-ending").innerText(), /4-token limit/);
  // The conversation survives moving to another page and back.
  const turns = await page.locator(".turn").count();
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Documents" }).click();
  await page.getByRole("heading", { level: 1, name: "Documents" }).waitFor();
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Chat" }).click();
  await page.locator(".turn").nth(turns - 1).waitFor();
  assert.equal(await page.locator(".turn").count(), turns);
  await page.getByTestId("chat-clear").click();
  assert.equal(await page.getByTestId("answer").count(), 0);
  assert.deepEqual(browser.errors, []);
  await page.close();
});
