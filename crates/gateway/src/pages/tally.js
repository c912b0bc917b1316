// Tally's pages: plain JavaScript over the JSON API and the results stream.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

async function api(method, path, options) {
  const { token, body, headers } = options || {};
  const init = { method, headers: Object.assign({}, headers || {}) };
  if (token) init.headers.Authorization = "Bearer " + token;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let json = null;
  try { json = await response.json(); } catch (_) { json = null; }
  return { status: response.status, json };
}

function errorText(answer) {
  const error = answer.json && answer.json.error;
  return error ? error.message + " (" + error.code + ")" : "HTTP " + answer.status;
}

// A token from this browser's storage, or a demo token when the gateway
// mints them (local mode), or one the user pastes.
async function getToken(role) {
  const key = role === "admin" ? "tally.admin-token" : "tally.voter-token";
  const stored = localStorage.getItem(key);
  if (stored) return stored;
  const minted = await api("POST", "/v1/dev/token?role=" + role);
  if (minted.status === 200 && minted.json && minted.json.token) {
    localStorage.setItem(key, minted.json.token);
    return minted.json.token;
  }
  return new Promise((resolve) => {
    $("signin").hidden = false;
    $("save-token").onclick = () => {
      const value = $("token").value.trim();
      if (!value) return;
      localStorage.setItem(key, value);
      $("signin").hidden = true;
      resolve(value);
    };
  });
}

function forgetToken(role) {
  localStorage.removeItem(role === "admin" ? "tally.admin-token" : "tally.voter-token");
}

function randomKey() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "w" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setStatus(text, status) {
  const node = $("status");
  node.textContent = text;
  node.dataset.status = status;
}

// ------------------------------------------------------------------ index
async function indexPage() {
  const answer = await api("GET", "/v1/polls");
  const box = $("polls");
  box.textContent = "";
  if (answer.status !== 200) { box.append(el("p", errorText(answer), { class: "error" })); return; }
  if (answer.json.polls.length === 0) { box.append(el("p", "No polls yet: create one on the admin page.", { class: "muted" })); return; }
  const table = el("table");
  for (const poll of answer.json.polls) {
    const row = el("tr");
    row.append(el("td", poll.question), el("td", poll.status, { class: "muted" }));
    const links = el("td");
    links.append(el("a", "vote", { href: "/vote?poll=" + encodeURIComponent(poll.poll_id) }), " · ",
      el("a", "results", { href: "/dashboard?poll=" + encodeURIComponent(poll.poll_id) }));
    row.append(links);
    table.append(row);
  }
  box.append(table);
}

// ------------------------------------------------------------------- vote
async function votePage() {
  const pollId = params.get("poll") || "";
  $("dashboard-link").href = "/dashboard?poll=" + encodeURIComponent(pollId);
  const answer = await api("GET", "/v1/polls/" + encodeURIComponent(pollId));
  if (answer.status !== 200) { $("question").textContent = errorText(answer); return; }
  const poll = answer.json;
  $("question").textContent = poll.question;
  $("poll-state").textContent = poll.status === "open" ? "" : "This poll is " + poll.status + ".";
  let token = await getToken("voter");
  const box = $("choices");
  box.className = poll.options.length === 2 ? "this-or-that" : "choices";
  const buttons = poll.options.map((option) => {
    const button = el("button", option.label, { "data-option": option.id });
    button.onclick = () => cast(option);
    box.append(button);
    return button;
  });
  const disable = () => buttons.forEach((button) => { button.disabled = true; });

  async function waitCounted(option) {
    for (let attempt = 0; attempt < 120; attempt++) {
      const me = await api("GET", "/v1/polls/" + encodeURIComponent(pollId) + "/votes/me", { token });
      if (me.status === 200 && me.json.status === "counted") {
        setStatus("Counted: " + labelOf(me.json.counted.option), "counted");
        return;
      }
      if (me.status === 200 && me.json.status === "rejected" && !me.json.counted) {
        setStatus("Not counted: " + me.json.rejected[0].reason, "error");
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    setStatus("Accepted: " + option.label + " (still being counted)", "accepted");
  }
  const labelOf = (id) => (poll.options.find((option) => option.id === id) || { label: id }).label;

  async function cast(option) {
    disable();
    setStatus("Sending…", "sending");
    const key = randomKey();
    for (let attempt = 0; attempt < 5; attempt++) {
      const sent = await api("POST", "/v1/polls/" + encodeURIComponent(pollId) + "/votes",
        { token, body: { option: option.id }, headers: { "Idempotency-Key": key } });
      if (sent.status === 202) {
        setStatus("Accepted: " + option.label + ", counting…", "accepted");
        return waitCounted(option);
      }
      if (sent.status === 409 && sent.json.vote) {
        setStatus("You already voted: " + labelOf(sent.json.vote.option) + " (counted)", "counted");
        return;
      }
      if (sent.status === 401) { forgetToken("voter"); token = await getToken("voter"); continue; }
      if (sent.status === 429 || sent.status >= 500) { await new Promise((r) => setTimeout(r, 1000)); continue; }
      setStatus(errorText(sent), "error");
      return;
    }
    setStatus("The vote could not be sent; try again later", "error");
  }

  const me = await api("GET", "/v1/polls/" + encodeURIComponent(pollId) + "/votes/me", { token });
  if (me.status === 200 && me.json.status === "counted") {
    disable();
    setStatus("Counted: " + labelOf(me.json.counted.option), "counted");
  } else if (poll.status !== "open") {
    disable();
  }
}

// -------------------------------------------------------------- dashboard
// Results arrive over the stream; when the stream fails or the gateway
// sends a `poll` event (it sheds streams), the page polls the results URL
// instead, with jitter, and tries the stream again later. A trend of votes
// per second over the last five minutes is drawn from the totals.
function dashboardPage() {
  const pollId = params.get("poll") || "";
  const resultsUrl = "/v1/polls/" + encodeURIComponent(pollId) + "/results";
  $("vote-link").href = "/vote?poll=" + encodeURIComponent(pollId);
  let source = null;
  let pollTimer = null;
  let pollEvery = 2000;
  let retryTimer = null;
  const jitter = (ms) => ms * (0.8 + Math.random() * 0.4);
  function connection(text, live) {
    $("live").className = live ? "dot live" : "dot";
    $("connection").textContent = text;
  }
  function startPolling(every) {
    if (every) pollEvery = every;
    if (pollTimer === null) pollOnce();
  }
  function stopPolling() {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }
  async function pollOnce() {
    pollTimer = -1;
    try {
      const answer = await api("GET", resultsUrl, { headers: { "Cache-Control": "no-cache" } });
      if (answer.status === 200) render(answer.json);
    } catch (_) { /* the next poll tries again */ }
    if (pollTimer === -1) pollTimer = setTimeout(pollOnce, jitter(pollEvery));
  }
  function openStream() {
    retryTimer = null;
    source = new EventSource(resultsUrl + "/stream");
    source.onopen = () => { stopPolling(); connection("live", true); };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a 429 or 503) or shed: poll, and try the stream later.
        connection("polling", false);
        startPolling();
        if (retryTimer === null) retryTimer = setTimeout(openStream, jitter(30000));
      } else {
        connection("reconnecting", false);
        startPolling();
      }
    };
    source.addEventListener("results", (event) => render(JSON.parse(event.data)));
    source.addEventListener("poll", (event) => {
      const asked = JSON.parse(event.data);
      source.close();
      connection("polling", false);
      startPolling(asked.interval_ms);
      if (retryTimer === null) retryTimer = setTimeout(openStream, jitter(60000));
    });
  }
  openStream();
  api("GET", resultsUrl).then((answer) => {
    if (answer.status === 200) render(answer.json);
    else $("question").textContent = errorText(answer);
  });
  let shown = -1;
  const samples = [];
  setInterval(() => {
    if (shown < 0) return;
    samples.push({ at: Date.now(), total: shown });
    while (samples.length > 301) samples.shift();
    drawTrend();
  }, 1000);
  function drawTrend() {
    const svg = $("trend");
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const seconds = (samples[i].at - samples[i - 1].at) / 1000;
      rates.push(seconds > 0 ? Math.max(0, samples[i].total - samples[i - 1].total) / seconds : 0);
    }
    svg.dataset.points = String(rates.length);
    const line = $("trend-line");
    if (rates.length < 2) { line.setAttribute("points", ""); return; }
    const top = Math.max(1, ...rates);
    const width = 300, height = 60;
    const step = width / 299;
    const points = rates.map((rate, i) => {
      const x = width - (rates.length - 1 - i) * step;
      const y = height - (rate * (height - 4)) / top - 2;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    line.setAttribute("points", points.join(" "));
    $("trend-top").textContent = Math.round(top).toLocaleString() + " votes/s";
    svg.dataset.peak = String(Math.round(top));
  }
  function render(results) {
    if (results.total < shown) return;
    shown = results.total;
    $("question").textContent = results.question;
    $("total").textContent = results.total.toLocaleString();
    $("total").dataset.total = String(results.total);
    $("rate").textContent = results.votes_per_second.toLocaleString();
    $("poll-status").textContent = results.status;
    $("as-of").textContent = new Date(results.as_of).toLocaleTimeString();
    const bars = $("bars");
    bars.textContent = "";
    for (const option of results.options) {
      const share = results.total ? (option.votes * 100) / results.total : 0;
      const row = el("div", null, { class: "bar-row", "data-option": option.id });
      const label = el("div", null, { class: "bar-label" });
      label.append(el("span", option.label), el("span", option.votes.toLocaleString() + " · " + share.toFixed(1) + "%"));
      const track = el("div", null, { class: "bar-track" });
      const bar = el("div", null, { class: "bar" });
      bar.style.width = share.toFixed(2) + "%";
      track.append(bar);
      row.append(label, track);
      bars.append(row);
    }
  }
}

// ------------------------------------------------------------------ admin
async function adminPage() {
  let token = await getToken("admin");
  async function call(method, path, body) {
    let answer = await api(method, path, { token, body });
    if (answer.status === 401 || answer.status === 403) {
      forgetToken("admin");
      token = await getToken("admin");
      answer = await api(method, path, { token, body });
    }
    return answer;
  }
  async function loadPolls() {
    const answer = await call("GET", "/v1/polls");
    const table = $("polls");
    table.textContent = "";
    if (answer.status !== 200) { table.append(el("tr", errorText(answer))); return; }
    const head = el("tr");
    ["Poll", "Status", "Closes", ""].forEach((name) => head.append(el("th", name)));
    table.append(head);
    for (const poll of answer.json.polls) {
      const row = el("tr", null, { "data-poll": poll.poll_id });
      row.append(el("td", poll.poll_id + ": " + poll.question), el("td", poll.status, { class: "poll-status" }),
        el("td", poll.closes_at ? new Date(poll.closes_at).toLocaleString() : "–", { class: "muted" }));
      const actions = el("td", null, { class: "row" });
      if (poll.status === "draft") {
        const open = el("button", "Open", { class: "open" });
        open.onclick = async () => { const a = await call("POST", "/v1/polls/" + encodeURIComponent(poll.poll_id) + "/open"); if (a.status !== 200) alert(errorText(a)); loadPolls(); };
        actions.append(open);
      }
      if (poll.status === "open") {
        const close = el("button", "Close", { class: "secondary close" });
        close.onclick = async () => { const a = await call("POST", "/v1/polls/" + encodeURIComponent(poll.poll_id) + "/close"); if (a.status !== 200) alert(errorText(a)); loadPolls(); };
        actions.append(close);
      }
      actions.append(el("a", "results", { href: "/dashboard?poll=" + encodeURIComponent(poll.poll_id) }));
      row.append(actions);
      table.append(row);
    }
  }
  async function loadPipeline() {
    const answer = await call("GET", "/v1/pipeline");
    if (answer.status !== 200) { $("pipeline-rate").textContent = "?"; return; }
    const health = answer.json;
    $("pipeline-rate").textContent = health.votes_per_second.toLocaleString();
    $("pipeline-lag").textContent = (health.millis_behind_max / 1000).toFixed(1) + " s";
    $("pipeline-counted").textContent = health.votes_counted_total.toLocaleString();
    const rejects = $("rejects");
    rejects.textContent = "";
    const reasons = Object.entries(health.rejected_by_reason);
    if (reasons.length === 0) rejects.append(el("tr", "none"));
    for (const [reason, count] of reasons) { const row = el("tr"); row.append(el("td", reason), el("td", count)); rejects.append(row); }
    const workers = $("workers");
    workers.textContent = "";
    if (health.workers.length === 0) workers.append(el("tr", "no worker metrics configured (TALLY_WORKER_METRICS_URLS)"));
    for (const worker of health.workers) {
      const row = el("tr");
      row.append(el("td", worker.worker_id || worker.url), el("td", worker.up ? "up" : "down: " + (worker.error || "")),
        el("td", worker.votes_counted + " counted"), el("td", (worker.millis_behind / 1000).toFixed(1) + " s behind"));
      workers.append(row);
    }
  }
  $("create").onsubmit = async (event) => {
    event.preventDefault();
    const options = $("poll-options").value.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
      const [id, ...label] = line.split("=");
      return label.length ? { id: id.trim(), label: label.join("=").trim() } : { id: id.trim() };
    });
    const answer = await call("POST", "/v1/polls", {
      poll_id: $("poll-id").value.trim(), question: $("poll-question").value.trim(), options, open: $("poll-open").checked,
    });
    $("create-result").textContent = answer.status === 201 ? "created" : errorText(answer);
    $("create-result").className = answer.status === 201 ? "muted" : "error";
    loadPolls();
  };
  loadPolls();
  loadPipeline();
  setInterval(loadPipeline, 2000);
  setInterval(loadPolls, 5000);
}

const pages = { index: indexPage, vote: votePage, dashboard: dashboardPage, admin: adminPage };
(pages[document.body.dataset.page] || (() => {}))();
