// The app shell in a real browser: navigation, backend health in the header, and the live
// WebSocket indicator (connect, lose the server, reconnect).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, test } from "node:test";
import { launchBrowser, screenshot, startServer } from "./harness.mjs";

const PLACES = ["Documents", "Triples", "Train", "Evaluate", "Chat"];

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

test("shell shows the five places, health and a connected indicator", async () => {
  const page = await browser.context.newPage();
  await page.goto(server.url);
  // "/" leads to Documents.
  await page.waitForURL(/\/documents$/);
  const nav = page.getByRole("navigation", { name: "Main" });
  assert.deepEqual(await nav.getByRole("link").allInnerTexts(), PLACES);
  await page.getByRole("heading", { level: 1, name: "Documents" }).waitFor();

  const link = page.getByTestId("link");
  await page.waitForSelector('[data-testid="link"][data-state="connected"]', { timeout: 15_000 });
  assert.equal(await link.innerText(), "connected");

  const models = page.getByTestId("models");
  await models.waitFor();
  const chips = await models.locator("li").allInnerTexts();
  assert.ok(chips.some((c) => c.includes("all-MiniLM-L6-v2") && /retriever/i.test(c)), `models: ${chips}`);
  assert.ok(chips.some((c) => c.includes("SmolLM2-135M-Instruct") && /generator/i.test(c)), `models: ${chips}`);
  assert.equal(await page.getByTestId("device").innerText(), "cpu");

  await screenshot(page, "shell");
  assert.deepEqual(browser.errors, []);
  await page.close();
});

test("every place is reachable by its link and by its address", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/documents`);
  for (const place of PLACES) {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: place }).click();
    await page.waitForURL(new RegExp(`/${place.toLowerCase()}$`));
    await page.getByRole("heading", { level: 1, name: place }).waitFor();
    const current = page.locator('nav a[aria-current="page"]');
    assert.equal(await current.innerText(), place);
  }
  // A deep link loads the page directly (the server falls back to index.html).
  await page.goto(`${server.url}/evaluate`);
  await page.getByRole("heading", { level: 1, name: "Evaluate" }).waitFor();
  await page.goto(`${server.url}/no-such-page`);
  await page.getByRole("heading", { level: 1, name: "Page not found" }).waitFor();
  await page.close();
});

test("narrow window keeps navigation usable", async () => {
  const narrow = await launchBrowser({ viewport: { width: 390, height: 844 } });
  try {
    const page = await narrow.context.newPage();
    await page.goto(`${server.url}/chat`);
    await page.getByRole("heading", { level: 1, name: "Chat" }).waitFor();
    // The header's model chips arrive with the health answer: measure with them in place (they
    // once widened the page to 477 px, which a measurement taken before them missed).
    await page.getByText("database ok").waitFor();
    for (const place of PLACES) {
      const box = await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: place }).boundingBox();
      assert.ok(box && box.height > 0, `${place} link is laid out`);
    }
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `no horizontal scroll of the page (scrollWidth ${width})`);
    await screenshot(page, "shell-narrow");
  } finally {
    await narrow.close();
  }
});

test("indicator shows the loss of the server and reconnects when it returns", async () => {
  const own = await startServer();
  const page = await browser.context.newPage();
  try {
    await page.goto(own.url);
    await page.waitForSelector('[data-testid="link"][data-state="connected"]', { timeout: 15_000 });
    assert.equal(await own.stop(), 0, "graceful shutdown exits 0");
    await page.waitForSelector('[data-testid="link"][data-state="retrying"]', { timeout: 10_000 });
    assert.match(await page.getByTestId("link").innerText(), /retrying in \d+s/);
    const again = await startServer({ port: own.port, dataDir: own.dataDir });
    try {
      await page.waitForSelector('[data-testid="link"][data-state="connected"]', { timeout: 30_000 });
    } finally {
      await again.stop();
    }
  } finally {
    await page.close();
    await own.stop();
  }
});

test("a server started with a token works when the page is opened with it", async () => {
  const token = "e2e-token-0123456789";
  const guarded = await startServer({ token });
  const page = await browser.context.newPage();
  try {
    await page.goto(`${guarded.url}/train`);
    await page.getByTestId("health-error").waitFor();
    assert.match(await page.getByTestId("health-error").innerText(), /token/);

    await page.goto(`${guarded.url}/train?token=${token}`);
    await page.waitForSelector('[data-testid="link"][data-state="connected"]', { timeout: 15_000 });
    await page.getByTestId("models").waitFor();
    assert.ok(!page.url().includes(token), "token removed from the address bar");

    // Export is a request with the token, not a bare link (which got 401 as its file).
    const auth = { Authorization: `Bearer ${token}` };
    const form = new FormData();
    form.append("file", new Blob(["Abstract,Question,Answer\nCats sleep a lot.,Do cats sleep?,a lot\n"]), "one.csv");
    const imported = await fetch(`${guarded.url}/api/v1/triples/import`, { method: "POST", headers: auth, body: form });
    assert.equal(imported.status, 200, await imported.text());
    await fetch(`${guarded.url}/api/v1/triples/bulk`, {
      method: "POST", headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ action: "set_status_matching", matching: {}, status: "approved" }),
    });
    await page.getByRole("link", { name: "Triples" }).first().click();
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Export approved (1)" }).click(),
    ]);
    const csv = await readFile(await download.path(), "utf8");
    assert.ok(csv.startsWith("Abstract,Question,Answer"), csv.slice(0, 120));
  } finally {
    await page.close();
    await guarded.stop();
  }
});
