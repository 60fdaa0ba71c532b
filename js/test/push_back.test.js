import test from "node:test";
import assert from "node:assert/strict";
import { asyncRequest } from "../../crates/async-endpoint/assets/async_endpoint.js";
import { fakeClock, fakeFetch, usePlatform, BACKOFF, reply, accepted, rejection, gaps, unhandled } from "../test-support/fakes.js";

const PUSH_BACK = {
  type: "about:blank",
  title: "Too Many Requests",
  status: 429,
  detail: "Too many requests are pending; wait for some to finish, then start again.",
};
const tooMany = (retryAfter = "1") =>
  reply(429, PUSH_BACK, { "content-type": "application/problem+json", ...(retryAfter ? { "retry-after": retryAfter } : {}) });

test("a start refused with 429 is sent again after Retry-After, then proceeds", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [tooMany("2"), tooMany("1"), accepted(), reply(200, { ok: true })]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.deepEqual(result.body, { ok: true });
  assert.equal(fetch.calls.length, 4);
  // Two starts again, each after the 429's Retry-After; then the first waiting poll at once.
  assert.deepEqual(gaps(fetch), [2000, 1000, 0]);
  for (const call of fetch.calls.slice(0, 3)) {
    assert.equal(call.headers.get("async-request-id"), null, "each retry is a start, not a poll");
  }
  // One start, one key: the start sent again after a 429 (or a 503 in between) keeps its key.
  const keys = new Set(fetch.calls.slice(0, 3).map((c) => c.headers.get("idempotency-key")));
  assert.equal(keys.size, 1);
  assert.ok([...keys][0], "the start carries a key");
  assert.equal(clock.pending(), 0);
});

test("a start pushed back, then answered 503, then accepted sends one key throughout", async (t) => {
  const clock = fakeClock();
  const unavailable = reply(503, { status: 503 }, { "content-type": "application/problem+json", "retry-after": "1" });
  const fetch = fakeFetch(clock, [tooMany("1"), unavailable, accepted(), reply(200, { ok: true })]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.deepEqual(result.body, { ok: true });
  assert.equal(fetch.calls.length, 4);
  const keys = fetch.calls.slice(0, 3).map((c) => c.headers.get("idempotency-key"));
  assert.equal(new Set(keys).size, 1, `keys: ${keys}`);
});

test("429s on the start outlasting the retries reject with kind failed, status 429 and the problem", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, Array.from({ length: 3 }, () => tooMany("1")));
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { retries: 2 })));
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 429);
  assert.deepEqual(e.body, PUSH_BACK);
  assert.equal(fetch.calls.length, 3, "the start and two retries");
  assert.equal(clock.pending(), 0);
});

test("with retries: 0 a 429 on the start rejects at once", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [tooMany("1")]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { retries: 0 })));
  assert.equal(e.status, 429);
  assert.equal(fetch.calls.length, 1);
});

test("retries of a refused start stay within the overall timeout", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, Array.from({ length: 6 }, () => tooMany("5")));
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 7000 })));
  assert.equal(e.kind, "timeout");
  assert.equal(fetch.calls.length, 2, "the second wait of 5 s passes the 7 s timeout");
  assert.equal(clock.pending(), 0);
});

test("a 429 without Retry-After waits the backoff; a huge Retry-After is clamped to its cap", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [tooMany(null), tooMany("3600"), accepted(), reply(200, { ok: true })]);
  usePlatform(t, clock, fetch);
  await clock.run(asyncRequest("/x"));
  assert.deepEqual(gaps(fetch), [BACKOFF.minDelay, BACKOFF.maxDelay, 0]);
});

test("no unhandled rejections", () => {
  assert.deepEqual(unhandled, []);
});
