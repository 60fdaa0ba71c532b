// Notification delay of the bundled JS client under Node, against the real server.
// Usage: node js_delay.mjs <client module path> <base url> <per-duration count> <ms,ms,...>
// Prints one JSON object: {stream: {ms: [{delay, requests}]}, waiting: {...}, jquery: {...},
// streams: n}, where `delay` is (client resolved − job finished) in ms, both wall clock on this
// machine, `requests` the async request's own HTTP requests, and `streams` how many times the
// shared event stream was opened in all.
import { pathToFileURL } from "node:url";

const [modulePath, base, countArg, durationsArg] = process.argv.slice(2);
const { asyncRequest } = await import(pathToFileURL(modulePath).href);
const count = Number(countArg);
const durations = durationsArg.split(",").map(Number);
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The library's client with its defaults. It calls the global `fetch`, which is wrapped here to
// count each async request's calls, told apart by a header of its own (the server ignores it).
const realFetch = globalThis.fetch;
const calls = new Map();
let streams = 0;
globalThis.fetch = (u, i) => {
  const run = new Headers(i && i.headers).get("x-bench-run");
  if (run) calls.set(run, (calls.get(run) ?? 0) + 1);
  if (String(u).endsWith("/async-endpoint/stream")) streams++;
  return realFetch(u, i);
};
let seq = 0;
// `stream`: the defaults (one shared event stream, one poll on `finished`). `waiting`: no stream,
// every request holding its own waiting poll (no per-origin budget: Node has no connection limit).
async function viaClient(ms, options) {
  const run = String(++seq);
  const { body } = await asyncRequest(`${base}/timed?ms=${ms}`, { headers: { "x-bench-run": run }, ...options });
  return { delay: now() - body, requests: calls.get(run) };
}
const VARIANTS = { stream: {}, waiting: { stream: false, maxWaitingPolls: Infinity } };

// The original gem's jQuery poller: re-poll after 1 s, then after 1 s + 40 % of the time elapsed
// since the start; id and token in the query string; no waiting polls.
async function viaJquerySchedule(ms) {
  const url = `${base}/timed?ms=${ms}`;
  const t0 = now();
  let requests = 1;
  const first = await realFetch(url);
  const { async_request_id: id, async_request_token: token } = await first.json();
  let delay = 1000;
  for (;;) {
    await sleep(delay);
    requests++;
    const res = await realFetch(`${url}&async_request_id=${id}&async_request_token=${encodeURIComponent(token)}`);
    if (res.status !== 202) {
      const body = await res.json();
      return { delay: now() - body, requests };
    }
    await res.text();
    delay = 1000 + 0.4 * (now() - t0);
  }
}

const out = { stream: {}, waiting: {}, jquery: {} };
const runs = [];
for (const ms of durations) {
  for (const k of Object.keys(out)) out[k][ms] = [];
  for (let i = 0; i < count; i++) {
    // Spread the starts a little so the samples do not all share one phase.
    const jitter = Math.random() * 200;
    for (const [name, options] of Object.entries(VARIANTS)) {
      runs.push(sleep(jitter).then(() => viaClient(ms, options)).then((r) => out[name][ms].push(r)));
    }
    runs.push(sleep(jitter).then(() => viaJquerySchedule(ms)).then((r) => out.jquery[ms].push(r)));
  }
}
await Promise.all(runs);
out.streams = streams;
console.log(JSON.stringify(out));
