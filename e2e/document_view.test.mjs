// One document in a real browser: its passages with pages, then question generation against a
// stand-in OpenAI-compatible server (started here), watched live until it finishes.
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";
import { launchBrowser, screenshot, standInLlm, startServer } from "./harness.mjs";

const fixtures = path.resolve(import.meta.dirname, "../backend/tests/fixtures");

let server;
let browser;
let llm;

/** Question prompts that show the built-in worked examples (few-shot). */
let fewShotPrompts = 0;

/** Questions for question prompts, an answer from the passage for answer prompts; 100 ms each. */
const catsAndDogs = (prompt) => {
  if (prompt.includes("different questions") && prompt.includes("Now the passage to ask about")) fewShotPrompts += 1;
  return prompt.includes("different questions")
    ? "1. How long does a domestic cat sleep?\n2. What do dogs help farmers with?"
    : prompt.includes("How long") ? "about fifteen hours a day" : "herd sheep across the hills";
};

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  llm = await standInLlm(100, catsAndDogs);
});

after(async () => {
  await browser?.close();
  await server?.stop();
  llm?.close();
});

test("a document's passages, then generation watched live", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents`);
  await page.getByLabel("Choose files to upload").setInputFiles(path.join(fixtures, "two_pages.pdf"));
  await page.getByRole("link", { name: "two_pages.pdf" }).click();
  await page.waitForURL(/\/documents\/\d+$/);
  await page.getByRole("heading", { level: 1, name: "two_pages.pdf" }).waitFor();
  const passage = page.locator(".passage").first();
  await passage.waitFor();
  assert.match(await passage.innerText(), /pp\. 1–2/);
  assert.match(await passage.innerText(), /Basenji/);

  const form = page.getByRole("form", { name: "Generate questions" });
  await form.getByLabel("Use an OpenAI-compatible server").check();
  await form.getByLabel("Server URL").fill(`http://127.0.0.1:${llm.address().port}/v1`);
  await form.getByLabel("Model", { exact: true }).fill("stand-in");
  await form.getByLabel("Questions per passage").fill("2");
  await form.getByLabel(/two worked examples/).check();
  await form.getByRole("button", { name: "Start for the whole document" }).click();
  const progress = page.getByTestId("synth-progress");
  await page.waitForSelector('[data-testid="synth-progress"][data-status="finished"]', { timeout: 30_000 });
  assert.match(await progress.innerText(), /1 of 1 passages · 2 triples kept · 0 filtered/);
  assert.equal(fewShotPrompts, 1, "the server was shown the worked examples");
  // The counts above follow: two new pending triples.
  await page.getByText(/2 pending, 0 approved, 0 rejected/).waitFor();

  // A triple written by hand for the passage.
  await page.getByRole("button", { name: "Add a triple for passage 1" }).click();
  const form2 = page.getByRole("form", { name: "New triple" });
  await form2.getByLabel("Question").fill("Which dog breed does not bark?");
  await form2.getByLabel("Answer").fill("The Basenji");
  await form2.getByRole("button", { name: "Save triple" }).click();
  await page.getByText(/Triple \d+ added, pending review/).waitFor();
  await page.getByText(/3 pending, 0 approved, 0 rejected/).waitFor();
  await screenshot(page, "document-view");
  assert.deepEqual(browser.errors, []);
  await page.close();
});
