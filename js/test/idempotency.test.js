import test from "node:test";
import assert from "node:assert/strict";
import { asyncRequest, installJQuery, newIdempotencyKey } from "../../crates/async-endpoint/assets/async_endpoint.js";
import {
  fakeClock, fakeFetch, usePlatform, BACKOFF, reply, accepted, problem, networkError, gaps, flush, unhandled,
} from "../test-support/fakes.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const key = (call) => call.headers.get("idempotency-key");

test("every start carries a fresh Idempotency-Key; polls carry none", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), reply(200, { a: 1 }), accepted(), reply(200, { a: 2 })]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x"));
  await clock.run(asyncRequest("/x"));
  const [start1, poll1, start2, poll2] = fetch.calls;
  assert.match(key(start1), UUID);
  assert.match(key(start2), UUID);
  assert.notEqual(key(start1), key(start2), "a new start gets a new key");
  assert.equal(key(poll1), null);
  assert.equal(key(poll2), null);
});

test("a start retried after a network error and a 503 re-sends its key, then polls", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [
    networkError(),
    problem(503, "Service Unavailable"),
    reply(502, "Bad Gateway", { "retry-after": "2" }),
    accepted(),
    reply(200, { ok: true }),
  ]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x", { method: "POST", body: { n: 1 } }));
  assert.deepEqual(result.body, { ok: true });
  const starts = fetch.calls.slice(0, 4);
  assert.ok(starts.every((c) => c.method === "POST" && c.body === '{"n":1}'));
  assert.match(key(starts[0]), UUID);
  assert.ok(starts.every((c) => key(c) === key(starts[0])), "one key for the start and its retries");
  assert.equal(key(fetch.calls[4]), null);
  // Backoff after the network error and the 503 (no hint), then the 502's Retry-After.
  assert.deepEqual(gaps(fetch).slice(0, 3), [BACKOFF.minDelay, BACKOFF.minDelay * BACKOFF.factor, 2000]);
});

test("a 422 problem for a reused key is a failure, not retried", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [problem(422, "Unprocessable Entity")]);
  usePlatform(t, clock, fetch);
  await assert.rejects(clock.run(asyncRequest("/x")), (e) => e.kind === "failed" && e.status === 422);
  assert.equal(fetch.calls.length, 1);
});

test("the caller's own Idempotency-Key is kept", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [networkError(), accepted(), reply(200, {})]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x", { headers: { "Idempotency-Key": "order-42" } }));
  assert.deepEqual(fetch.calls.slice(0, 2).map(key), ["order-42", "order-42"]);
});

test("keys come from crypto.getRandomValues where crypto.randomUUID is missing", async (t) => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  const real = globalThis.crypto;
  let filled = 0;
  Object.defineProperty(globalThis, "crypto", {
    value: { getRandomValues: (a) => (filled++, real.getRandomValues(a)) },
    configurable: true,
    writable: true,
  });
  t.after(() => Object.defineProperty(globalThis, "crypto", saved));
  const keys = new Set(Array.from({ length: 100 }, newIdempotencyKey));
  assert.equal(filled, 100);
  assert.equal(keys.size, 100);
  for (const k of keys) assert.match(k, UUID);
});

test("jQuery's $.getAsyncRequest sends a key, and re-sends it on a retried start", async (t) => {
  const $ = { Deferred: fakeDeferred };
  installJQuery($);
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [reply(504, "Gateway Timeout"), accepted(), reply(200, { done: 1 })]);
  usePlatform(t, clock, fetch);
  let body;
  const p = $.getAsyncRequest("/x", 10000).done((b) => (body = b));
  await clock.run(p.asPromise);
  await flush();
  assert.deepEqual(body, { done: 1 });
  assert.match(key(fetch.calls[0]), UUID);
  assert.equal(key(fetch.calls[1]), key(fetch.calls[0]));
});

test("no unhandled rejections", async () => {
  await flush();
  assert.deepEqual(unhandled, []);
});

/** Just enough of jQuery's Deferred for one request; `asPromise` settles with it. */
function fakeDeferred() {
  let resolveP, rejectP;
  const asPromise = new Promise((res, rej) => ((resolveP = res), (rejectP = rej)));
  asPromise.catch(() => {});
  const done = [];
  const promise = {
    asPromise,
    done(fn) {
      done.push(fn);
      return promise;
    },
    fail() {
      return promise;
    },
  };
  return {
    resolve: (...args) => (done.forEach((fn) => fn(...args)), resolveP()),
    reject: (e) => rejectP(e),
    notify() {},
    promise: () => promise,
  };
}
