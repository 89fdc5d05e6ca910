// Not a test: times the Triples page against a server holding many triples (10,000 imported from
// ../shared/data/qa/halueval_qa.jsonl, say), in chromium at 1280×800.
//   node e2e/bench-triples.mjs http://127.0.0.1:8099
import { launchBrowser } from "./harness.mjs";

const url = process.argv[2] ?? "http://127.0.0.1:8080";
const browser = await launchBrowser();
const page = await browser.context.newPage();
const time = async (label, work) => {
  const start = performance.now();
  await work();
  console.log(`${label}: ${(performance.now() - start).toFixed(0)} ms`);
};
await time("open /triples until the first row shows", async () => {
  await page.goto(`${url}/triples`);
  await page.locator("tr.triple").first().waitFor();
});
const total = await page.getByRole("navigation", { name: "Pages" }).innerText();
console.log(`pager: ${total.replace(/\n/g, " ")}`);
await time("next page", async () => {
  const first = await page.locator("tr.triple td.question").first().innerText();
  await page.getByRole("button", { name: "Next" }).click();
  await page.waitForFunction((f) => document.querySelector("tr.triple td.question")?.innerText !== f, first);
});
await page.locator("section.triples").focus();
await time("20 × j (move the cursor)", async () => {
  for (let i = 0; i < 20; i++) await page.keyboard.press("j");
  await page.waitForFunction(() => [...document.querySelectorAll("tr.triple")].indexOf(document.querySelector("tr.triple.current")) === 20);
});
await time("a (approve) until the counts move", async () => {
  const before = await page.getByRole("group", { name: "Status" }).innerText();
  await page.keyboard.press("a");
  await page.waitForFunction((b) => document.querySelector('[aria-label="Status"]').innerText !== b, before);
});
await time("search 'magazine' until the rows change", async () => {
  await page.getByLabel("Search").fill("magazine");
  await page.getByLabel("Search").press("Enter");
  await page.waitForFunction(() => document.querySelector(".pager span")?.innerText.includes("triples") && !document.querySelector(".pager span").innerText.includes("10000"));
});
await browser.close();
