import test from "node:test";
import assert from "node:assert/strict";
import { asyncRequest, DEFAULTS } from "../../crates/async-endpoint/assets/async_endpoint.js";
import { fakeClock, fakeFetch, usePlatform, BACKOFF, reply, accepted, gaps, flush, unhandled, ID, TOKEN } from "../test-support/fakes.js";

test("resolves with the final answer after a few polls", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [
    accepted({}, { "retry-after": "1" }),
    accepted({ status: "running" }, { "retry-after": "1" }),
    reply(200, { some_data: "a", another_data: "b" }, { "content-type": "application/json", "x-app": "yes" }),
  ]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/my_endpoint"));
  assert.equal(result.status, 200);
  assert.deepEqual(result.body, { some_data: "a", another_data: "b" });
  assert.equal(result.headers.get("x-app"), "yes");
  assert.equal(result.id, ID);
  assert.equal(fetch.calls.length, 3);
  // The first poll goes out at once (asking to wait); later ones honour Retry-After.
  assert.deepEqual(gaps(fetch), [0, 1000]);
  assert.equal(clock.pending(), 0, "no sleep timer left");
  // The overall timeout (an AbortSignal.timeout, which cannot be cleared) firing later changes nothing.
  assert.deepEqual(clock.timeouts, [DEFAULTS.timeout]);
  await clock.run(new Promise((r) => clock.setTimeout(r, DEFAULTS.timeout)));
  await flush();
  assert.equal(fetch.calls.length, 3);
  assert.deepEqual(unhandled, []);
});

test("a final 2xx other than 200 resolves, text bodies stay text", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), reply(201, "created, not JSON")]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.equal(result.status, 201);
  assert.equal(result.body, "created, not JSON");
});

test("an immediate final answer on start resolves without polling", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [reply(200, { cached: true })]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.deepEqual(result.body, { cached: true });
  assert.equal(result.id, undefined);
  assert.equal(fetch.calls.length, 1);
});

test("waiting polls: Prefer: wait=N is sent and a held poll is followed at once", async (t) => {
  const clock = fakeClock();
  const held = { "preference-applied": "wait=20", "retry-after": "3" };
  const fetch = fakeFetch(clock, [
    accepted({}, { "retry-after": "0" }),
    // the server holds this poll for 20 s
    () => new Promise((r) => clock.setTimeout(() => r(accepted({ status: "running" }, held)), 20000)),
    accepted({ status: "running" }, held),
    reply(200, { ok: 1 }),
  ]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.deepEqual(result.body, { ok: 1 });
  // The start asks to be held briefly (a fast job is then one request); the polls for the wait option.
  assert.equal(fetch.calls[0].headers.get("prefer"), "wait=1");
  for (const c of fetch.calls.slice(1)) assert.equal(c.headers.get("prefer"), "wait=20");
  // gap 1: Retry-After 0 on start; gap 2: the 20 s hold; gap 3: 0 ms although Retry-After said 3
  assert.deepEqual(gaps(fetch), [0, 20000, 0]);
});

test("a fast job costs one request: the start is held and answers with the result", async (t) => {
  const clock = fakeClock();
  const held = { "preference-applied": "wait=1" };
  const fetch = fakeFetch(clock, [
    // the server holds the start 300 ms, until the job is done
    () => new Promise((r) => clock.setTimeout(() => r(reply(200, { ok: 1 }, held)), 300)),
  ]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.equal(result.status, 200);
  assert.deepEqual(result.body, { ok: 1 });
  assert.equal(fetch.calls.length, 1);
  assert.equal(fetch.calls[0].headers.get("prefer"), "wait=1");
});

test("wait option sets Prefer, wait: 0 omits it", async (t) => {
  for (const [wait, start, expected] of [[5, "wait=1", "wait=5"], [0, null, null]]) {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, [accepted(), reply(200, {})]);
    usePlatform(t, clock, fetch);
    await clock.run(asyncRequest("/x", { wait }));
    assert.equal(fetch.calls[0].headers.get("prefer"), start, "on the start");
    assert.equal(fetch.calls[1].headers.get("prefer"), expected, "on the poll");
  }
});

test("Retry-After in seconds is honoured and clamped to the backoff cap", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [
    accepted({}, { "retry-after": "2" }),
    accepted({}, { "retry-after": "120" }),
    accepted({}, { "retry-after": "0" }),
    reply(200, {}),
  ]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { wait: 0 }));
  assert.deepEqual(gaps(fetch), [2000, BACKOFF.maxDelay, 0]);
});

test("Retry-After as an HTTP-date is honoured and clamped to [0, the backoff cap]", async (t) => {
  const clock = fakeClock();
  const at = (ms) => new Date(clock.now() + ms).toUTCString();
  const fetch = fakeFetch(clock, [
    () => accepted({}, { "retry-after": at(3000) }),
    () => accepted({}, { "retry-after": at(3600 * 1000) }),
    () => accepted({}, { "retry-after": at(-60000) }),
    reply(200, {}),
  ]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { wait: 0 }));
  assert.deepEqual(gaps(fetch), [3000, BACKOFF.maxDelay, 0]);
});

test("a fractional or garbage Retry-After: fractions honoured, garbage ignored for backoff", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [
    accepted({}, { "retry-after": "1.5" }),
    accepted({}, { "retry-after": "soon" }),
    accepted({}, { "retry-after": "-3" }),
    reply(200, {}),
  ]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { wait: 0 }));
  assert.deepEqual(gaps(fetch), [1500, BACKOFF.minDelay, Math.round(BACKOFF.minDelay * BACKOFF.factor)]);
});

test("without hints, delays start short and grow to the cap", async (t) => {
  const clock = fakeClock();
  const steps = Array.from({ length: 12 }, () => accepted());
  const fetch = fakeFetch(clock, [...steps, reply(200, {})]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { wait: 0, timeout: 0 }));
  const d = gaps(fetch);
  assert.equal(d[0], BACKOFF.minDelay);
  for (let i = 1; i < d.length; i++) assert.ok(d[i] >= d[i - 1], `non-decreasing: ${d}`);
  assert.ok(d[1] / d[0] >= 1.4 && d[1] / d[0] <= 2, `grows by ~1.5x: ${d}`);
  assert.equal(d.at(-1), BACKOFF.maxDelay, `reaches the cap: ${d}`);
  assert.equal(d.filter((x) => x === BACKOFF.maxDelay).length >= 3, true, "stays at the cap");
});

test("backoff has jitter: each delay is reduced by up to a quarter, at the cap too", async (t) => {
  const randoms = [0.9, 0.5, 0, 0.9, 0.5, 0.25, 0, 0.9, 0.5, 0];
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [...randoms.map(() => accepted()), reply(200, {})]);
  let i = 0;
  usePlatform(t, clock, fetch, () => randoms[i++]);
  await clock.run(asyncRequest("/x", { wait: 0 }));
  // bases 250 × 1.5^n capped at 5000 (250, 375, 562.5, 843.75, … 4271.48, 5000, 5000), each
  // reduced by 0.25 × random and rounded
  assert.deepEqual(gaps(fetch), [194, 328, 563, 654, 1107, 1780, 2848, 3310, 4375, 5000]);
});

test("onProgress gets status and progress from every 202, onStart gets the state", async (t) => {
  const clock = fakeClock();
  const progress = { at: 1, total: 2, percent: 50, message: "calling the external API" };
  const fetch = fakeFetch(clock, [
    accepted({ status: "queued" }),
    accepted({ status: "running", progress }),
    accepted({ status: "retrying", progress: { at: 1, total: null, percent: null, message: "again" } }),
    reply(200, {}),
  ]);
  const seen = [];
  const started = [];
  usePlatform(t, clock, fetch);
  await clock.run(
    asyncRequest("/x?q=1", { onProgress: (p) => seen.push(p), onStart: (s) => started.push(s) }),
  );
  assert.deepEqual(seen, [
    { status: "queued", progress: null },
    { status: "running", progress },
    { status: "retrying", progress: { at: 1, total: null, percent: null, message: "again" } },
  ]);
  assert.equal(started.length, 1);
  assert.deepEqual(started[0], { url: "/x?q=1", method: "GET", id: ID, token: TOKEN, headers: {} });
});

test("polls carry id and token in headers, never in the URL", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), accepted(), reply(200, {})]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/my_endpoint?param_1=a", { headers: { Accept: "application/json" } }));
  assert.equal(fetch.calls[0].headers.get("async-request-id"), null);
  for (const c of fetch.calls) {
    assert.equal(c.url, "/my_endpoint?param_1=a");
    assert.ok(!c.url.includes(ID) && !c.url.includes(TOKEN));
    assert.equal(c.headers.get("accept"), "application/json");
    assert.equal(c.init.cache, "no-store");
    assert.ok(c.signal instanceof AbortSignal, "every fetch gets an abort signal");
  }
  for (const c of fetch.calls.slice(1)) {
    assert.equal(c.headers.get("async-request-id"), ID);
    assert.equal(c.headers.get("async-request-token"), TOKEN);
  }
});

test("POST: same method and body on every poll; plain objects are sent as JSON", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), accepted(), reply(200, { done: true })]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { method: "post", body: { param_1: "v1" } }));
  for (const c of fetch.calls) {
    assert.equal(c.method, "POST");
    assert.equal(c.body, '{"param_1":"v1"}');
    assert.equal(c.headers.get("content-type"), "application/json");
  }
});

test("non-JSON-able bodies (FormData) are passed through untouched", async (t) => {
  const clock = fakeClock();
  const form = new FormData();
  form.set("param_1", "v1");
  const fetch = fakeFetch(clock, [accepted(), reply(200, {})]);
  let state;
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { method: "POST", body: form, onStart: (s) => (state = s) }));
  assert.equal(fetch.calls[0].body, form);
  assert.equal(fetch.calls[1].body, form);
  assert.equal(state.body, undefined, "only string bodies go into the saved state");
});

test("extra fetch options go through `init`", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), reply(200, {})]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { init: { credentials: "include" } }));
  assert.equal(fetch.calls[0].init.credentials, "include");
  assert.equal(fetch.calls[1].init.credentials, "include");
});

test("no unhandled rejections in this file", async () => {
  await flush(5);
  assert.deepEqual(unhandled, []);
});

test("with waiting polls on, the first poll is sent at once; without, it honours Retry-After", async (t) => {
  for (const [wait, firstGap] of [[20, 0], [0, 1000]]) {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, [accepted({}, { "retry-after": "1" }), reply(200, {})]);
    usePlatform(t, clock, fetch);
    await clock.run(asyncRequest("/x", { wait }));
    assert.deepEqual(gaps(fetch), [firstGap], `wait=${wait}`);
    assert.equal(fetch.calls[1].headers.get("prefer"), wait ? `wait=${wait}` : null);
  }
});
