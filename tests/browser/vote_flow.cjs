// Headless Chromium through playwright-core: open the dashboard and the
// vote page of a poll, vote, and see the dashboard's count go up within
// 2 s of the vote's acceptance. Saves screenshots (phone-sized vote page,
// dashboard, admin page) into SCREENSHOT_DIR.
//
// Environment: BASE_URL, POLL, CHROMIUM (the browser binary), SCREENSHOT_DIR.
"use strict";

const { chromium } = require("playwright-core");
const path = require("path");

const base = process.env.BASE_URL;
const poll = process.env.POLL;
const shots = process.env.SCREENSHOT_DIR;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1024, height: 768 } });
    const dashboard = await context.newPage();
    const problems = [];
    dashboard.on("pageerror", (error) => problems.push("dashboard: " + error.message));
    await dashboard.goto(`${base}/dashboard?poll=${poll}`);
    await dashboard.waitForFunction(() => document.getElementById("connection").textContent === "live", null, { timeout: 10000 });
    await dashboard.waitForFunction(() => document.getElementById("bars").children.length > 0, null, { timeout: 10000 });
    const before = Number(await dashboard.getAttribute("#total", "data-total"));

    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const vote = await phone.newPage();
    vote.on("pageerror", (error) => problems.push("vote: " + error.message));
    await vote.goto(`${base}/vote?poll=${poll}`);
    const buttons = vote.locator("#choices button");
    await buttons.first().waitFor({ timeout: 10000 });
    const count = await buttons.count();
    const layout = await vote.getAttribute("#choices", "class");
    if (count === 2 && layout !== "this-or-that") throw new Error(`two options must show as this-or-that, not ${layout}`);
    await vote.screenshot({ path: path.join(shots, "vote-before.png"), fullPage: true });
    await buttons.first().tap();
    await vote.waitForFunction(() => ["accepted", "counted"].includes(document.getElementById("status").dataset.status), null, { timeout: 10000 });
    const accepted = Date.now();
    await dashboard.waitForFunction((n) => Number(document.getElementById("total").dataset.total) > n, before, { timeout: 2000 });
    const seenAfter = Date.now() - accepted;
    await vote.waitForFunction(() => document.getElementById("status").dataset.status === "counted", null, { timeout: 10000 });
    const status = await vote.textContent("#status");
    await vote.screenshot({ path: path.join(shots, "vote-counted.png"), fullPage: true });
    await dashboard.screenshot({ path: path.join(shots, "dashboard.png"), fullPage: true });

    const admin = await context.newPage();
    admin.on("pageerror", (error) => problems.push("admin: " + error.message));
    await admin.goto(`${base}/admin`);
    await admin.locator(`tr[data-poll="${poll}"]`).waitFor({ timeout: 10000 });
    await admin.waitForFunction(() => document.getElementById("pipeline-counted").textContent !== "–", null, { timeout: 10000 });
    await admin.screenshot({ path: path.join(shots, "admin.png"), fullPage: true });
    if (problems.length) throw new Error("page errors: " + problems.join("; "));
    console.log(JSON.stringify({ before, after: before + 1, dashboard_update_ms: seenAfter, vote_status: status, screenshots: shots }));
  } finally {
    await browser.close();
  }
}

main().catch((error) => { console.error(error.stack || String(error)); process.exit(1); });
