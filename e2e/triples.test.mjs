// The Triples page in a real browser: import a fixture, edit an answer (it persists), approve and
// reject with the keyboard, filter by status with the counts, approve a selection, export, and a
// stale edit that shows the conflict.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
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

const tab = (page, name) => page.getByRole("group", { name: "Status" }).getByRole("button", { name: new RegExp(`^${name} \\(`) });

test("review triples with the keyboard, edit, filter, bulk-approve, export, conflict", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/triples`);
  await page.getByRole("heading", { level: 1, name: "Triples" }).waitFor();
  await page.getByText("No triples match").waitFor();

  await page.getByLabel("Import triples").setInputFiles(path.join(fixtures, "halueval_24.csv"));
  await page.getByText("Imported 24 triples").waitFor();
  await tab(page, "all").filter({ hasText: "all (24)" }).waitFor();
  assert.equal(await page.getByRole("navigation", { name: "Pages" }).innerText(), "Previous\npage 1 of 1 · 24 triples\nNext");

  // Edit the first answer in place; Enter saves; a reload shows it.
  const first = page.locator("tr.triple").first();
  await first.locator("td.answer span").dblclick();
  await first.getByLabel("Edit answer").fill("an edited answer");
  await first.getByLabel("Edit answer").press("Enter");
  await page.getByText(/Saved \(version 2\)/).waitFor();
  // Undo puts the old answer back; a second edit stays.
  const original = await first.locator("td.answer").innerText();
  await page.getByRole("button", { name: "Undo last edit" }).click();
  await page.getByText(/Saved \(version 3\)/).waitFor();
  assert.notEqual(await first.locator("td.answer").innerText(), "an edited answer");
  await first.locator("td.answer span").dblclick();
  await first.getByLabel("Edit answer").fill("an edited answer");
  await first.getByLabel("Edit answer").press("Enter");
  await page.getByText(/Saved \(version 4\)/).waitFor();
  await page.reload();
  await page.locator("tr.triple").first().getByText("an edited answer").waitFor();
  assert.ok(original.length > 0);

  // Keyboard: approve rows 1 and 2, reject row 3.
  await page.locator("section.triples").focus();
  for (const key of ["a", "j", "a", "j", "r"]) {
    await page.keyboard.press(key);
    if (key !== "j") await page.waitForTimeout(150);
  }
  await page.waitForFunction(() => document.querySelectorAll('tr.triple[data-status="approved"]').length === 2
    && document.querySelectorAll('tr.triple[data-status="rejected"]').length === 1);
  await tab(page, "approved").filter({ hasText: "approved (2)" }).waitFor();
  await page.keyboard.press("?");
  await page.getByRole("dialog", { name: "Keyboard shortcuts" }).waitFor();
  await screenshot(page, "triples-keys");
  await page.keyboard.press("Escape");

  // Filter by status: the counts agree.
  await tab(page, "approved").click();
  await page.waitForFunction(() => document.querySelectorAll("tr.triple").length === 2);
  assert.match(await tab(page, "pending").innerText(), /pending \(21\)/);
  assert.match(await tab(page, "rejected").innerText(), /rejected \(1\)/);

  // Bulk-approve a filtered selection: every pending triple.
  await tab(page, "pending").click();
  await page.waitForFunction(() => document.querySelectorAll('tr.triple[data-status="pending"]').length === 21);
  await page.getByRole("button", { name: "Select all 21 matching" }).click();
  assert.equal(await page.getByTestId("selection").innerText(), "all 21 matching selected");
  await page.getByRole("button", { name: "Approve selected" }).click();
  await page.getByText("21 triples changed").waitFor();
  await tab(page, "approved").filter({ hasText: "approved (23)" }).waitFor();

  // Bulk delete asks first: the one rejected triple.
  await tab(page, "rejected").click();
  await page.waitForFunction(() => document.querySelectorAll("tr.triple").length === 1);
  await page.getByRole("button", { name: "Select this page" }).click();
  await page.getByRole("button", { name: "Delete selected" }).click();
  const confirm = page.getByRole("alertdialog", { name: "Confirm deletion" });
  await confirm.getByText("Delete 1 triples? This cannot be undone.").waitFor();
  await confirm.getByRole("button", { name: "Delete them" }).click();
  await page.getByText("No triples match").waitFor();
  // A row's own buttons: reset one approved triple, approve it again.
  await tab(page, "approved").click();
  await page.waitForFunction(() => document.querySelectorAll("tr.triple").length === 23);
  const row = page.locator("tr.triple").first();
  const rowId = (await row.getByRole("checkbox").getAttribute("aria-label")).replace("Select triple ", "");
  await row.getByRole("button", { name: `Reset triple ${rowId}`, exact: true }).click();
  await tab(page, "approved").filter({ hasText: "approved (22)" }).waitFor();
  await tab(page, "pending").click();
  await page.getByRole("button", { name: `Approve triple ${rowId}`, exact: true }).click();
  await tab(page, "approved").filter({ hasText: "approved (23)" }).waitFor();

  // Export the approved ones (the tab's): 23 rows and a header.
  await tab(page, "approved").click();
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Export approved (23)" }).click(),
  ]);
  assert.equal(download.suggestedFilename(), "triples.csv");
  const csv = await readFile(await download.path(), "utf8");
  assert.ok(csv.startsWith("Abstract,Question,Answer"), csv.slice(0, 80));
  const rows = await (await fetch(`${server.url}/api/v1/triples/export?format=jsonl&status=approved`)).text();
  assert.equal(rows.trim().split("\n").length, 23);

  // A stale edit: someone else changes the first triple; our edit meets the conflict view.
  await tab(page, "all").click();
  await page.waitForFunction(() => document.querySelectorAll("tr.triple").length === 23);
  const listed = await (await fetch(`${server.url}/api/v1/triples?per_page=1`)).json();
  const theirs = listed.items[0];
  await fetch(`${server.url}/api/v1/triples/${theirs.id}`, {
    method: "PATCH", headers: { "content-type": "application/json" },
    body: JSON.stringify({ version: theirs.version, answer: "their answer" }),
  });
  await page.locator("tr.triple").first().locator("td.answer span").dblclick();
  await page.locator("tr.triple").first().getByLabel("Edit answer").fill("my answer");
  await page.locator("tr.triple").first().getByLabel("Edit answer").press("Enter");
  const conflict = page.getByRole("alertdialog", { name: "Edit conflict" });
  await conflict.getByText("their answer").waitFor();
  await conflict.getByText("my answer").waitFor();
  await screenshot(page, "triples-conflict");
  await conflict.getByRole("button", { name: "Keep mine" }).click();
  await page.getByText(/Saved \(version \d+\)/).waitFor();
  const now = await (await fetch(`${server.url}/api/v1/triples/${theirs.id}`)).json();
  assert.equal(now.answer, "my answer");
  await screenshot(page, "triples");

  // A failed save says why and keeps the text: the triple is deleted behind our back.
  const second = page.locator("tr.triple").nth(1);
  const secondId = (await second.getByRole("checkbox").getAttribute("aria-label")).replace("Select triple ", "");
  await fetch(`${server.url}/api/v1/triples/bulk`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ action: "delete", ids: [Number(secondId)] }),
  });
  await second.locator("td.answer span").dblclick();
  await second.getByLabel("Edit answer").fill("words worth keeping");
  await second.getByLabel("Edit answer").press("Enter");
  await page.getByText(/Not saved: no such triple/).waitFor();
  assert.equal(await second.getByLabel("Edit answer").inputValue(), "words worth keeping");
  assert.deepEqual(browser.errors.filter((e) => !/404/.test(e)), []);
  await page.close();
});
