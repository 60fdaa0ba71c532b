// Notification delay of the bundled JS client under Node, against the real server.
// Usage: node js_delay.mjs <client module path> <base url> <per-duration count> <ms,ms,...>
// Prints one JSON object: {default: {ms: [{delay, requests}]}, jquery: {...}}, where `delay` is
// (client resolved − job finished) in ms, both wall clock on this machine.
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
globalThis.fetch = (u, i) => {
  const run = new Headers(i && i.headers).get("x-bench-run");
  if (run) calls.set(run, (calls.get(run) ?? 0) + 1);
  return realFetch(u, i);
};
let seq = 0;
async function viaDefault(ms) {
  const run = String(++seq);
  const { body } = await asyncRequest(`${base}/timed?ms=${ms}`, { headers: { "x-bench-run": run } });
  return { delay: now() - body, requests: calls.get(run) };
}

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

const out = { default: {}, jquery: {} };
const runs = [];
for (const ms of durations) {
  out.default[ms] = [];
  out.jquery[ms] = [];
  for (let i = 0; i < count; i++) {
    // Spread the starts a little so the samples do not all share one phase.
    const jitter = Math.random() * 200;
    runs.push(sleep(jitter).then(() => viaDefault(ms)).then((r) => out.default[ms].push(r)));
    runs.push(sleep(jitter).then(() => viaJquerySchedule(ms)).then((r) => out.jquery[ms].push(r)));
  }
}
await Promise.all(runs);
console.log(JSON.stringify(out));
