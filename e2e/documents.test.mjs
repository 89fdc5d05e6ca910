// The Documents page in a real browser: upload several files at once (each with its outcome, an
// unsupported one with its error in words), the list with pages and passages, and deletion with
// a confirmation that says what happens to the triples.
import assert from "node:assert/strict";
import path from "node:path";
import { writeFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { after, before, test } from "node:test";
import { launchBrowser, screenshot, startServer } from "./harness.mjs";

const fixtures = path.resolve(import.meta.dirname, "../backend/tests/fixtures");

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("upload files, see them listed, delete one with confirmation", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "attune-e2e-files-"));
  const notes = path.join(dir, "notes.md");
  await writeFile(notes, "# Parrots\n\nParrots can learn to imitate human speech.\n\n## Food\n\nThey eat seeds and fruit.");
  const slides = path.join(dir, "slides.pptx");
  await writeFile(slides, "PK not a document");

  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents`);
  await page.getByRole("heading", { level: 1, name: "Documents" }).waitFor();
  await page.getByText("No documents yet").waitFor();

  await page.getByLabel("Choose files to upload").setInputFiles([path.join(fixtures, "two_pages.pdf"), notes, slides]);
  const uploads = page.getByRole("list", { name: "Uploads" });
  await page.waitForFunction(() => document.querySelectorAll('.upload[data-state="busy"]').length === 0
    && document.querySelectorAll(".upload").length === 3);
  const lines = await uploads.locator("li").allInnerTexts();
  const line = (name) => lines.find((l) => l.includes(name)) ?? "";
  assert.match(line("two_pages.pdf"), /1 passage from 2 pages/);
  assert.match(line("notes.md"), /1 passage$/);
  // Refusals in words; the parser's own words behind "Details".
  assert.match(line("slides.pptx"), /This kind of file cannot be read: upload a PDF, \.txt or \.md file\./);
  const refused = uploads.locator("li", { hasText: "slides.pptx" });
  await refused.getByText("Details").click();
  assert.match(await refused.locator("details").innerText(), /unsupported file type/);

  // The list, once every upload is in.
  const table = page.locator(".documents-table");
  await page.waitForFunction(() => document.querySelectorAll(".documents-table tbody tr").length === 2);
  const rows = await table.locator("tbody tr").allInnerTexts();
  assert.ok(rows.some((r) => r.includes("two_pages.pdf") && r.includes("pdf") && /\t2\t/.test(r)), rows.join("\n"));
  await screenshot(page, "documents");

  // The same file again is recognised.
  await page.getByLabel("Choose files to upload").setInputFiles(path.join(fixtures, "two_pages.pdf"));
  await page.getByText(/already uploaded as “two_pages.pdf”/).waitFor();

  // Deleting asks first, and says there are no triples.
  await page.getByRole("button", { name: "Delete notes.md" }).click();
  const dialog = page.getByRole("alertdialog", { name: "Confirm deletion" });
  await dialog.getByText(/It has no triples/).waitFor();
  await screenshot(page, "documents-delete");
  await dialog.getByRole("button", { name: "Delete the document" }).click();
  await page.waitForFunction(() => document.querySelectorAll(".documents-table tbody tr").length === 1);
  assert.equal(await page.getByRole("alertdialog").count(), 0);
  assert.deepEqual(browser.errors, []);
  await page.close();
});

test("adapt automatically: one button, its stages live, a stop before training says why", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents`);
  const panel = page.getByTestId("adapt-panel");
  await panel.getByRole("heading", { name: "Adapt automatically" }).waitFor();
  // The mode the API takes when none is named is the one the form starts on.
  assert.equal(await panel.getByTestId("adapt-mode").inputValue(), "retriever");
  await panel.getByTestId("adapt-limit").fill("1");
  // The list reloading (another upload) keeps what the form holds.
  const dir = await mkdtemp(path.join(tmpdir(), "attune-e2e-files-"));
  const more = path.join(dir, "owls.md");
  await writeFile(more, "# Owls\n\nOwls hunt at night and can turn their heads a long way round.");
  await page.getByLabel("Choose files to upload").setInputFiles(more);
  await page.waitForFunction(() => document.querySelectorAll(".documents-table tbody tr").length === 2);
  assert.equal(await panel.getByTestId("adapt-limit").inputValue(), "1");
  await panel.getByTestId("adapt-start").click();
  const job = panel.getByTestId("adapt-job");
  await job.waitFor();
  // While it runs the button waits, and the Jobs panel has the job with its stage.
  assert.equal(await panel.getByTestId("adapt-start").isDisabled(), true);
  await page.getByTestId("jobs-button").click();
  await page.locator('[data-testid="job"][data-kind="adapt"]').waitFor();
  await page.getByRole("button", { name: "Close the jobs panel" }).click();
  await screenshot(page, "documents-adapt");
  // One passage of the local model's questions cannot make the 8 triples a run needs: it stops
  // at the first stage, saying why, and offers to resume once there are more.
  await page.waitForFunction(() => document.querySelector('[data-testid="adapt-job"]')?.dataset.status === "failed",
    null, { timeout: 300_000 });
  assert.match(await job.getByTestId("adapt-state").innerText(), /Failed while writing questions — .*at least 8 are needed/);
  assert.equal(await job.locator('li[data-state="stopped"]').count(), 1);
  await job.getByTestId("adapt-resume").waitFor();
  assert.equal(await panel.getByTestId("adapt-start").isDisabled(), false);
  assert.deepEqual(browser.errors, []);
  await page.close();
});
