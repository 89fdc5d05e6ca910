// The workbench as a first-time user walks it, in a real browser: jobs that survive a reload and
// another tab (queued one at a time per LLM, Cancel that says so at once), a run that keeps
// nothing and says why (its dropped candidates kept with their reasons, one rescued), review that
// keeps up (the cursor moves on, an edit pencil, search as you type, the focused record, export
// that follows the tab), bad document addresses, and every page on a 390 px phone.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { launchBrowser, screenshot, standInLlm, startServer } from "./harness.mjs";

const fixtures = path.resolve(import.meta.dirname, "../backend/tests/fixtures");

let server;
let browser;
let slow;
let wrong;
let documentId;

const questionsOrAnswer = (question, answer) => (prompt) =>
  prompt.includes("different questions") ? `1. ${question}` : answer;

/** A text of `n` paragraphs long enough that each is a passage of its own. */
function longText(n) {
  const paragraphs = [];
  for (let i = 1; i <= n; i++) {
    const words = [];
    for (let w = 0; w < 260; w++) words.push(`word${i}x${w % 37}`);
    paragraphs.push(`Section ${i}. Cats sleep about fifteen hours a day. ${words.join(" ")}.`);
  }
  return paragraphs.join("\n\n");
}

const api = (route, init = {}) => fetch(`${server.url}/api/v1${route}`, {
  ...init, headers: { "content-type": "application/json", ...(init.headers ?? {}) },
});

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  slow = await standInLlm(1200, questionsOrAnswer("How long do cats sleep?", "about fifteen hours a day"));
  wrong = await standInLlm(50, questionsOrAnswer("What do the dogs herd?", "purple elephants dancing"));
});

after(async () => {
  await browser?.close();
  await server?.stop();
  slow?.close();
  wrong?.close();
});

async function useServer(page, llm) {
  const form = page.getByRole("form", { name: "Generate questions" });
  await form.getByLabel("Use an OpenAI-compatible server").check();
  await form.getByLabel("Server URL").fill(`http://127.0.0.1:${llm.address().port}/v1`);
  await form.getByLabel("Model", { exact: true }).fill("stand-in");
  await form.getByLabel("Questions per passage").fill("1");
  return form;
}

test("jobs survive a reload and another tab, queue per LLM, and Cancel says so at once", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents`);
  await page.getByLabel("Choose files to upload").setInputFiles({
    name: "cats.txt", mimeType: "text/plain", buffer: Buffer.from(longText(6)),
  });
  await page.getByRole("link", { name: "cats.txt" }).click();
  await page.waitForURL(/\/documents\/\d+$/);
  documentId = Number(page.url().split("/").pop());
  await page.locator(".passage").nth(3).waitFor();
  const form = await useServer(page, slow);
  await form.getByRole("button", { name: "Start for the whole document" }).click();
  // The run starts once the worker has picked it up; on a loaded 2-core machine that took over 15 s once.
  await page.waitForSelector('[data-testid="synth-progress"][data-status="running"]', { timeout: 60_000 });

  // A reload (or another tab) finds the running job: its progress and Cancel, here and in the panel.
  await page.reload();
  await page.waitForSelector('[data-testid="synth-progress"][data-status="running"]', { timeout: 15_000 });
  await page.getByTestId("synth-cancel").waitFor();
  const other = await browser.context.newPage();
  await other.goto(`${server.url}/triples`);
  await other.getByTestId("jobs-button").click();
  await other.locator('[data-testid="job"][data-kind="synthesis"][data-status="running"]').waitFor();
  assert.match(await other.getByTestId("jobs-count").innerText(), /^1$/);
  await screenshot(other, "jobs-panel");

  // A second run on the same LLM waits its turn.
  const runs = await (await api("/synth/runs")).json();
  const first = runs[0];
  const second = await (await api("/synth/runs", {
    method: "POST",
    body: JSON.stringify({ document_id: documentId, questions_per_passage: 1, limit: 1,
      llm: { type: "open_ai", base_url: `http://127.0.0.1:${slow.address().port}/v1`, model: "stand-in" } }),
  })).json();
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await (await api(`/synth/runs/${second.id}`)).json()).status, "queued", "one run at a time per LLM");
  await other.locator('[data-testid="job"][data-status="queued"]').waitFor();

  // Cancel: "Cancelling…" at once, disabled, then cancelled; the queued run starts.
  await page.getByTestId("synth-cancel").click();
  const cancel = page.getByTestId("synth-cancel");
  assert.match(await cancel.innerText(), /Cancelling…/);
  assert.ok(await cancel.isDisabled(), "a cancel in progress cannot be pressed again");
  await page.waitForFunction(async (id) => {
    const run = await (await fetch(`/api/v1/synth/runs/${id}`)).json();
    return run.status === "cancelled";
  }, first.id, { timeout: 20_000 });
  await page.waitForFunction(async (id) => {
    const run = await (await fetch(`/api/v1/synth/runs/${id}`)).json();
    return run.status !== "queued";
  }, second.id, { timeout: 20_000 });
  // The panel's Cancel does the same for the other job (or it finished: one passage).
  const running = other.locator('[data-testid="job"][data-kind="synthesis"][data-status="running"]');
  if (await running.count()) {
    const button = running.first().getByTestId("job-cancel");
    await button.click().catch(() => {});
  }
  await page.waitForFunction(async (id) => {
    const run = await (await fetch(`/api/v1/synth/runs/${id}`)).json();
    return ["cancelled", "succeeded"].includes(run.status);
  }, second.id, { timeout: 20_000 });
  await other.waitForFunction(() => document.querySelector('[data-testid="jobs-count"]').innerText.trim() === "0");
  // After a reload the panel still lists what ended meanwhile.
  await other.reload();
  await other.getByTestId("jobs-button").click();
  await other.locator('[data-testid="job"][data-kind="synthesis"][data-status="cancelled"]').first().waitFor();
  assert.deepEqual(browser.errors, []);
  await other.close();
  await page.close();
});

test("a run that keeps nothing says why; a dropped candidate is kept anyway", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents`);
  await page.getByLabel("Choose files to upload").setInputFiles({
    name: "pets.txt", mimeType: "text/plain", buffer: Buffer.from("Cats sleep about fifteen hours a day. Dogs herd sheep."),
  });
  await page.getByRole("link", { name: "pets.txt" }).click();
  await page.waitForURL(/\/documents\/\d+$/);
  const form = await useServer(page, wrong);
  await form.getByRole("button", { name: "Start for the whole document" }).click();
  await page.waitForSelector('[data-testid="synth-progress"][data-status="finished"]', { timeout: 30_000 });
  const why = await page.getByTestId("nothing-kept").innerText();
  assert.match(why, /No triple was kept: 1 answers not found in the passage/);
  assert.match(why, /OpenAI-compatible server/);
  await page.getByTestId("see-filtered").click();
  await page.waitForURL(/\/triples\?status=filtered&document_id=\d+$/);
  const row = page.locator('tr.triple[data-status="filtered"]');
  await row.first().waitFor();
  assert.equal(await row.count(), 1);
  assert.match(await row.getByTestId("filter-reason").innerText(), /not in the passage/);
  assert.match(await row.locator("td.source").innerText(), /pets\.txt/);
  await screenshot(page, "triples-filtered");
  await row.getByTestId("keep-anyway").click();
  await page.getByRole("button", { name: /^pending \(1\)/ }).waitFor();
  await page.getByRole("button", { name: /^filtered \(0\)/ }).waitFor();
  // Dropped candidates are not in "all", and never trained on.
  const all = await (await api("/triples?per_page=50")).json();
  assert.ok(all.items.every((t) => t.status !== "filtered"));
  await page.close();
});

test("review keeps up with the hands, and export follows the tab", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/triples`);
  await page.getByLabel("Import triples").setInputFiles(path.join(fixtures, "halueval_24.csv"));
  await page.getByText(/Imported 24 triples/).waitFor();
  // 24 imported, and what the runs above kept or rescued.
  const total = (await (await api("/triples?per_page=1")).json()).total;
  const shown = Math.min(total, 25);
  await page.getByRole("button", { name: new RegExp(`^all \\(${total}\\)`) }).waitFor();
  assert.ok(await page.getByRole("button", { name: "Delete selected" }).isDisabled());

  // Approve moves the cursor to the next row.
  const rows = page.locator("tr.triple");
  await rows.first().click();
  await page.locator("section.triples").focus();
  await page.keyboard.press("a");
  await page.waitForSelector('tr.triple:nth-child(1)[data-status="approved"]');
  await page.waitForSelector("tr.triple:nth-child(2).current");
  // The saved notice fades.
  const saved = page.getByText(/Saved \(version \d+\)/);
  await saved.waitFor();
  await saved.waitFor({ state: "detached", timeout: 8_000 });

  // A visible edit affordance.
  const second = rows.nth(1);
  const id = await second.getAttribute("data-id");
  await second.getByRole("button", { name: `Edit the question of triple ${id}` }).click();
  await second.getByLabel("Edit question").waitFor();
  await page.keyboard.press("Escape");

  // Search as you type, matches marked.
  const word = (await second.locator("td.question .cell-text").innerText()).split(/\s+/).find((w) => w.length > 5);
  await page.getByLabel("Search").pressSequentially(word, { delay: 20 });
  await page.waitForFunction((n) => document.querySelectorAll("tr.triple").length < n, shown);
  await page.locator("tr.triple mark").first().waitFor();
  await page.getByLabel("Search").fill("");
  await page.waitForFunction((n) => document.querySelectorAll("tr.triple").length === n, shown);

  // The focused record: Enter, next, Escape.
  await rows.first().click();
  await page.locator("section.triples").focus();
  await page.keyboard.press("Enter");
  const record = page.getByTestId("record-view");
  await record.waitFor();
  const q1 = await record.getByTestId("record-question").innerText();
  await record.getByTestId("record-next").click();
  assert.notEqual(await record.getByTestId("record-question").innerText(), q1);
  await screenshot(page, "triples-record");
  await page.keyboard.press("Escape");
  await record.waitFor({ state: "detached" });

  // Export says what it exports and follows the tab; formats with the review's columns.
  await page.getByRole("button", { name: /^approved \(1\)/ }).click();
  const [csv] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export approved (1)" }).click()]);
  const text = await readFile(await csv.path(), "utf8");
  assert.ok(text.startsWith("Abstract,Question,Answer,id,status,origin,document,page_start,page_end"), text.slice(0, 120));
  assert.equal(text.trim().split("\n").length, 2);
  await page.getByLabel("Export format").selectOption({ label: "Alpaca JSONL" });
  const [alpaca] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export approved (1)" }).click()]);
  assert.equal(alpaca.suggestedFilename(), "triples.alpaca.jsonl");
  const line = JSON.parse((await readFile(await alpaca.path(), "utf8")).trim());
  assert.deepEqual(Object.keys(line).sort(), ["input", "instruction", "output"]);
  await page.getByRole("button", { name: /^pending \(/ }).click();
  await page.getByRole("button", { name: /^Export pending \(\d+\)/ }).waitFor();
  const zip = await api("/triples/export?format=hf&status=pending");
  assert.equal(zip.headers.get("content-type"), "application/zip");
  assert.equal(Buffer.from(await zip.arrayBuffer()).subarray(0, 2).toString(), "PK");
  const sharegpt = await (await api("/triples/export?format=sharegpt&status=approved")).text();
  assert.equal(JSON.parse(sharegpt.trim()).conversations.length, 2);
  assert.deepEqual(browser.errors, []);
  await page.close();
});

test("a bad document address says so and offers no generation", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents/abc`);
  await page.getByText(/“abc” is not a document's address/).waitFor();
  assert.equal(await page.getByRole("form", { name: "Generate questions" }).count(), 0);
  await page.goto(`${server.url}/documents/999`);
  await page.locator(".document-view .error").first().waitFor();
  assert.match(await page.locator(".document-view .error").first().innerText(), /999/);
  assert.equal(await page.getByRole("form", { name: "Generate questions" }).count(), 0);
  await page.close();
});

test("every page fits a 390 px phone, and each is pictured at both widths", async () => {
  const pages = [["documents", "/documents"], ["document", `/documents/${documentId}`], ["triples", "/triples"],
    ["train", "/train"], ["evaluate", "/evaluate"], ["chat", "/chat"]];
  const phone = await launchBrowser({ viewport: { width: 390, height: 844 } });
  try {
    for (const [name, address] of pages) {
      for (const [width, context] of [["phone", phone.context], ["desktop", browser.context]]) {
        const page = await context.newPage();
        await page.goto(`${server.url}${address}`);
        await page.getByText("database ok").waitFor();
        await page.locator("h1").first().waitFor();
        await page.waitForTimeout(300);
        if (width === "phone") {
          const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
          assert.ok(overflow <= 0, `${address} scrolls sideways by ${overflow} px on a phone`);
        }
        await screenshot(page, `${name}-${width}`);
        await page.close();
      }
    }
    assert.deepEqual(phone.errors, []);
  } finally {
    await phone.close();
  }
});
