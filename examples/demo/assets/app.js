// The async-endpoint demo page. Plain ES module, no framework, no build step.
import { asyncRequest, AsyncRequestError } from "/async_endpoint.js";

const $id = (id) => document.getElementById(id);
const form = $id("form");
const cards = $id("cards");
const template = $id("card-template");
const MAX_CARDS = 12;
let counter = 0;
let runtimeThreads = 2;

/** The form's settings, as the endpoints' query parameters. */
function settings() {
  return {
    q: $id("q").value.trim() || "hello",
    delay_ms: Number($id("delay").value) * 1000,
    fail_rate: Number($id("fail").value),
  };
}

function query(params) {
  return new URLSearchParams({
    q: params.q,
    delay_ms: String(params.delay_ms),
    fail_rate: String(params.fail_rate),
  }).toString();
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// ---- Server facts -------------------------------------------------------------------------

async function loadInfo() {
  const facts = $id("facts");
  try {
    const info = await (await fetch("/api/info", { cache: "no-store" })).json();
    runtimeThreads = info.runtime_threads;
    $id("threads").textContent = runtimeThreads === 1 ? "1 user" : `${runtimeThreads} users`;
    facts.replaceChildren(
      el("span", {}, "backend ", el("b", { textContent: info.backend })),
      el("span", {}, "role ", el("b", { textContent: info.role })),
      el("span", {}, "pid ", el("b", { textContent: String(info.pid) })),
      el("span", {}, el("b", { textContent: String(info.runtime_threads) }),
        info.runtime_threads === 1 ? " runtime thread" : " runtime threads"),
    );
    if (info.jquery && window.jQuery && window.jQuery.getAsyncRequest) $id("jquery-panel").hidden = false;
  } catch (e) {
    facts.textContent = `cannot reach the server: ${e.message}`;
  }
}

// ---- Form ---------------------------------------------------------------------------------

function syncOutputs() {
  $id("delay-out").textContent = `${$id("delay").value} s`;
  $id("fail-out").textContent = `${$id("fail").value} %`;
}
$id("delay").addEventListener("input", syncOutputs);
$id("fail").addEventListener("input", syncOutputs);
syncOutputs();

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const count = Number(form.elements.count.value) || 1;
  const params = settings();
  for (let i = 0; i < count; i++) startCard(params);
});

$id("clear").addEventListener("click", () => {
  for (const card of [...cards.children]) {
    if (isFinished(card)) card.remove();
  }
});

const isFinished = (card) => ["done", "failed", "error", "cancelled"].includes(card.dataset.state);

// ---- Cards: one async request each ---------------------------------------------------------

function startCard(params) {
  const n = ++counter;
  const card = template.content.firstElementChild.cloneNode(true);
  const chip = card.querySelector(".chip");
  const bar = card.querySelector(".bar");
  const fill = bar.querySelector("span");
  const msg = card.querySelector(".msg");
  const time = card.querySelector(".time");
  card.dataset.n = String(n);
  card.querySelector(".card-title").append(
    `#${n} · “${params.q}” `,
    el("small", { textContent: `${seconds(params.delay_ms)}, ${params.fail_rate} % failure` }),
  );
  cards.prepend(card);
  while (cards.children.length > MAX_CARDS) {
    const oldest = [...cards.children].reverse().find(isFinished);
    if (!oldest) break;
    oldest.remove();
  }

  const started = performance.now();
  const tick = setInterval(() => { time.textContent = seconds(performance.now() - started); }, 100);
  const controller = new AbortController();
  card.querySelector(".stop").addEventListener("click", () => controller.abort());

  const setState = (state, label = state) => {
    card.dataset.state = state;
    chip.textContent = label;
  };
  const setPercent = (percent) => {
    fill.style.width = `${percent}%`;
    bar.setAttribute("aria-valuenow", String(percent));
    card.dataset.percent = String(percent);
  };
  setPercent(0);

  asyncRequest(`/api/lookup?${query(params)}`, {
    timeout: 90_000,
    signal: controller.signal,
    onStart: () => { setState("queued"); msg.textContent = "queued"; },
    onProgress: ({ status, progress }) => {
      setState(status);
      if (progress) {
        setPercent(progress.percent ?? 0);
        msg.textContent = progress.message;
      } else {
        msg.textContent = status === "queued" ? "queued, waiting for a worker" : status;
      }
    },
  })
    .then(({ body }) => {
      setState("done");
      setPercent(100);
      msg.textContent = "execute_task returned Ok(output)";
      card.append(
        el("p", { className: "result" }, body.answer,
          el("small", { textContent: `external call took ${seconds(body.took_ms)} · ran in worker pid ${body.worker_pid}` })),
      );
    })
    .catch((e) => {
      if (e instanceof AsyncRequestError && e.kind === "aborted") {
        // The client sent DELETE with the id and token: the server drops the task.
        setState("cancelled");
        msg.textContent = "cancelled on the server";
        card.append(el("p", { className: "result error" }, explain(e)));
        return;
      }
      const failed = e instanceof AsyncRequestError && e.kind === "failed";
      setState(failed ? "failed" : "error", failed ? `failed ${e.status}` : e.kind ?? "error");
      msg.textContent = failed ? "execute_task returned Err(Failure)" : e.kind;
      const text = failed ? (e.body && e.body.error) || e.message : explain(e);
      card.append(el("p", { className: "result error" }, text));
    })
    .finally(() => {
      clearInterval(tick);
      time.textContent = seconds(performance.now() - started);
    });
}

function explain(e) {
  if (!(e instanceof AsyncRequestError)) return String(e);
  switch (e.kind) {
    case "aborted": return "Cancelled: the job was stopped on the server, and its external call with it.";
    case "timeout": return "Gave up waiting (client timeout).";
    case "network": return `Network error: ${e.message}`;
    default: return e.message;
  }
}

// ---- The same call, synchronously ----------------------------------------------------------

async function timedFetch(url) {
  const started = performance.now();
  const response = await fetch(url, { cache: "no-store" });
  let body;
  try { body = await response.json(); } catch { body = {}; }
  return { status: response.status, body, ms: performance.now() - started };
}

function waitingOutput(out, button, label) {
  const started = performance.now();
  out.dataset.state = "waiting";
  button.disabled = true;
  const render = () => { out.textContent = `${label} ${seconds(performance.now() - started)} — no progress to show`; };
  render();
  const tick = setInterval(render, 100);
  return () => { clearInterval(tick); button.disabled = false; };
}

function showResults(out, results) {
  const ok = results.every((r) => r.status === 200);
  out.dataset.state = ok ? "done" : "failed";
  out.replaceChildren(...results.flatMap((r, i) => [
    i ? el("br") : "",
    el("b", { textContent: `${r.status}` }),
    ` after ${seconds(r.ms)} · ${r.body.answer ?? r.body.error ?? "no body"}`,
  ]));
}

$id("sync-await").addEventListener("click", async (event) => {
  const out = $id("sync-await-out");
  const done = waitingOutput(out, event.currentTarget, "waiting for one response…");
  try {
    showResults(out, [await timedFetch(`/sync/await?${query(settings())}`)]);
  } catch (e) {
    out.dataset.state = "failed";
    out.textContent = `network error: ${e.message}`;
  } finally {
    done();
  }
});

$id("sync-blocking").addEventListener("click", async (event) => {
  const out = $id("sync-blocking-out");
  const n = runtimeThreads;
  const done = waitingOutput(out, event.currentTarget, `waiting for ${n} responses…`);
  try {
    // Distinct URLs: browsers may hold back a request for a URL that is already being fetched.
    const url = (i) => `/sync/blocking?${query(settings())}&user=${i + 1}`;
    showResults(out, await Promise.all(Array.from({ length: n }, (_, i) => timedFetch(url(i)))));
  } catch (e) {
    out.dataset.state = "failed";
    out.textContent = `network error: ${e.message}`;
  } finally {
    done();
  }
});

// ---- Heartbeat: one slot per 200 ms, red while the previous beat is unanswered --------------

const hb = $id("hb");
const hbStatus = $id("hb-status");
const SLOTS = 75;
for (let i = 0; i < SLOTS; i++) hb.append(el("i", { className: "none" }));
let inFlight = null;
let lastLatency = null;

function pushSlot(className, heightPct) {
  const slot = el("i", { className });
  if (heightPct !== undefined) slot.style.height = `${heightPct}%`;
  hb.append(slot);
  hb.firstElementChild.remove();
}

function beat() {
  if (inFlight !== null) {
    const stalled = performance.now() - inFlight;
    pushSlot("miss");
    if (stalled > 400) {
      hbStatus.dataset.state = "stalled";
      hbStatus.textContent = `no answer for ${seconds(stalled)}`;
    }
    return;
  }
  if (lastLatency !== null) {
    // A square-root scale: 1 ms is a sliver, 200 ms fills the slot.
    const height = Math.min(100, 4 + Math.sqrt(lastLatency / 200) * 96);
    pushSlot(lastLatency > 100 ? "slow" : "", height);
  }
  const started = performance.now();
  inFlight = started;
  fetch("/api/heartbeat", { cache: "no-store" })
    .then(() => {
      lastLatency = performance.now() - started;
      hbStatus.dataset.state = lastLatency > 100 ? "slow" : "ok";
      hbStatus.textContent = `${Math.round(lastLatency)} ms`;
    })
    .catch(() => {
      lastLatency = null;
      hbStatus.dataset.state = "stalled";
      hbStatus.textContent = "server unreachable";
    })
    .finally(() => { inFlight = null; });
}
setInterval(beat, 200);

// ---- The original jQuery call ----------------------------------------------------------------

$id("jquery-run").addEventListener("click", (event) => {
  const $ = window.jQuery;
  const out = $id("jquery-out");
  const done = waitingOutput(out, event.currentTarget, "jQuery polling…");
  const url = `/api/lookup?${query(settings())}`;
  $.getAsyncRequest(url, 10000)
    .success(function (r) {
      done();
      out.dataset.state = "done";
      out.replaceChildren(el("b", { textContent: "success" }), ` · ${r.answer}`);
    })
    .error(function (r) {
      done();
      out.dataset.state = "failed";
      out.replaceChildren(el("b", { textContent: "error" }), ` · ${r.error === "timeout" ? "no answer within 10 s" : r.error}`);
    });
});

$id("curl").textContent =
  `curl -i '${location.origin}/api/lookup?q=hi&delay_ms=3000'`;

loadInfo();
