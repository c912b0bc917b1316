// Headless Chromium through playwright-core: the dashboard of a poll whose
// results stream is refused (the browser answers every stream request
// with a 503, as a shedding or overloaded gateway would) falls back to
// polling the results URL, shows the count go up after a vote, and draws
// the votes-per-second trend.
//
// Environment: BASE_URL, POLL, CHROMIUM (the browser binary).
"use strict";

const { chromium } = require("playwright-core");

const base = process.env.BASE_URL;
const poll = process.env.POLL;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1024, height: 768 } });
    let refused = 0;
    let polled = 0;
    await context.route("**/results/stream", (route) => {
      refused += 1;
      return route.fulfill({ status: 503, contentType: "application/json",
        body: JSON.stringify({ error: { code: "unavailable", message: "refused by the test" } }) });
    });
    const page = await context.newPage();
    const problems = [];
    page.on("pageerror", (error) => problems.push(error.message));
    page.on("request", (request) => { if (request.url().endsWith("/results")) polled += 1; });
    await page.goto(`${base}/dashboard?poll=${poll}`);
    await page.waitForFunction(() => document.getElementById("connection").textContent === "polling", null, { timeout: 10000 });
    await page.waitForFunction(() => document.getElementById("bars").children.length > 0, null, { timeout: 10000 });
    const before = Number(await page.getAttribute("#total", "data-total"));

    // A vote, through the API with a demo token.
    const minted = await (await fetch(`${base}/v1/dev/token`, { method: "POST" })).json();
    const sent = await fetch(`${base}/v1/polls/${poll}/votes`, {
      method: "POST",
      headers: { Authorization: "Bearer " + minted.token, "Content-Type": "application/json" },
      body: JSON.stringify({ option: "red" }),
    });
    if (sent.status !== 202) throw new Error("the vote was answered " + sent.status);
    const accepted = Date.now();
    await page.waitForFunction((n) => Number(document.getElementById("total").dataset.total) > n, before, { timeout: 15000 });
    const seenAfter = Date.now() - accepted;
    await page.waitForFunction(() => Number(document.getElementById("trend").dataset.points) >= 3, null, { timeout: 10000 });
    const points = (await page.getAttribute("#trend-line", "points")).trim().split(/\s+/).length;
    const connection = await page.textContent("#connection");
    if (problems.length) throw new Error("page errors: " + problems.join("; "));
    console.log(JSON.stringify({ before, refused, polled, seen_after_ms: seenAfter, connection, trend_points: points }));
  } finally {
    await browser.close();
  }
}

main().catch((error) => { console.error(error.stack || String(error)); process.exit(1); });
