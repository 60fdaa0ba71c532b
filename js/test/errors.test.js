import test from "node:test";
import assert from "node:assert/strict";
import { asyncRequest, AsyncRequestError, DEFAULTS } from "../../crates/async-endpoint/assets/async_endpoint.js";
import {
  fakeClock, fakeFetch, usePlatform, BACKOFF, reply, accepted, problem, hang, networkError, rejection, gaps, flush, unhandled,
} from "../test-support/fakes.js";

const FAILURE = { error: "My custom error message" };

test("422 (the app's failed answer) rejects with kind failed, status and parsed body", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), accepted({ status: "running" }), reply(422, FAILURE)]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.ok(e instanceof AsyncRequestError);
  assert.ok(e instanceof Error);
  assert.equal(e.name, "AsyncRequestError");
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 422);
  assert.deepEqual(e.body, FAILURE);
  assert.match(e.message, /422: My custom error message/);
  assert.equal(clock.pending(), 0);
});

test("404 and 410 problem+json reject with kind failed", async (t) => {
  for (const [status, title] of [[404, "Not Found"], [410, "Gone"]]) {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, [accepted(), problem(status, title)]);
    usePlatform(t, clock, fetch);
    const e = await rejection(clock.run(asyncRequest("/x")));
    assert.equal(e.kind, "failed");
    assert.equal(e.status, status);
    assert.equal(e.body.title, title);
    assert.equal(fetch.calls.length, 2, "no retry on 4xx");
  }
});

test("a 500 is a failure, not retried", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), reply(500, "Internal Server Error")]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 500);
  assert.equal(e.body, "Internal Server Error");
  assert.equal(fetch.calls.length, 2);
});

test("a 502/503/504 answer to the start is retried with its key, then rejects with kind failed", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, Array.from({ length: 3 }, () => problem(503, "Service Unavailable")));
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { retries: 2 })));
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 503);
  assert.equal(e.body.title, "Service Unavailable");
  assert.equal(fetch.calls.length, 3, "the start and 2 retries, all with one Idempotency-Key");
  assert.equal(new Set(fetch.calls.map((c) => c.headers.get("idempotency-key"))).size, 1);
});

test("other failure answers to the start reject at once", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [problem(500, "Internal Server Error")]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 500);
  assert.equal(fetch.calls.length, 1);
});

test("503 while polling is retried, honouring Retry-After, then succeeds", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [
    accepted({}, { "retry-after": "1" }),
    reply(503, { title: "Service Unavailable" }, { "retry-after": "2" }),
    reply(502, "Bad Gateway"),
    accepted({ status: "running" }, { "retry-after": "1" }),
    reply(200, { ok: true }),
  ]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x", { wait: 0 }));
  assert.deepEqual(result.body, { ok: true });
  // 1 s (start), 2 s (503's Retry-After), backoff after the 502, 1 s
  assert.deepEqual(gaps(fetch), [1000, 2000, BACKOFF.minDelay, 1000]);
});

test("502/503/504 while polling: bounded retries, then kind failed with the status", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), ...Array.from({ length: 3 }, () => reply(504, "Gateway Timeout"))]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { retries: 2 })));
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 504);
  assert.equal(e.body, "Gateway Timeout");
  assert.equal(fetch.calls.length, 4, "start + first poll + 2 retries");
});

test("an answer whose body breaks while being read rejects with kind network", async (t) => {
  const clock = fakeClock();
  const broken = { ...reply(200, {}), text: async () => { throw new TypeError("terminated"); } };
  const fetch = fakeFetch(clock, [accepted(), broken]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "network");
  assert.equal(e.status, 200);
  assert.equal(e.cause.message, "terminated");
});

test("a 503 whose body breaks counts as a transient failure and is retried", async (t) => {
  const clock = fakeClock();
  const broken = { ...reply(503, ""), text: async () => { throw new TypeError("terminated"); } };
  const fetch = fakeFetch(clock, [accepted(), broken, reply(200, { ok: 1 })]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x"));
  assert.deepEqual(result.body, { ok: 1 });
});

test("network errors while polling: default 5 retries with backoff, then kind network", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted({}, { "retry-after": "1" }), ...Array.from({ length: 6 }, networkError)]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "network");
  assert.ok(e.cause instanceof TypeError);
  assert.equal(e.status, undefined);
  assert.equal(fetch.calls.length, 1 + 1 + DEFAULTS.retries);
  const d = gaps(fetch).slice(1);
  assert.equal(d[0], BACKOFF.minDelay);
  for (let i = 1; i < d.length; i++) assert.ok(d[i] > d[i - 1], `backoff grows: ${d}`);
});

test("a network error between good polls resets the retry budget", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [
    accepted(), networkError(), networkError(), accepted(), networkError(), networkError(), reply(200, { ok: 1 }),
  ]);
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("/x", { retries: 2 }));
  assert.deepEqual(result.body, { ok: 1 });
});

test("network errors on the start: retried with its key (default 5 times), then kind network", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, Array.from({ length: 6 }, networkError));
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "network");
  assert.equal(e.cause.message, "fetch failed");
  assert.equal(fetch.calls.length, 1 + DEFAULTS.retries);
  assert.equal(new Set(fetch.calls.map((c) => c.headers.get("idempotency-key"))).size, 1);
});

test("protocol: a 202 without id or token", async (t) => {
  for (const fields of [{ async_request_id: undefined }, { async_request_token: "" }, { async_request_id: 42 }]) {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, [accepted(fields)]);
    usePlatform(t, clock, fetch);
    const e = await rejection(clock.run(asyncRequest("/x")));
    assert.equal(e.kind, "protocol", JSON.stringify(fields));
    assert.equal(e.status, 202);
    assert.equal(fetch.calls.length, 1);
  }
});

test("protocol: a 202 whose body is not JSON (start or poll)", async (t) => {
  for (const steps of [[reply(202, "<html>Accepted</html>")], [accepted(), reply(202, "")], [accepted(), reply(202, "null")]]) {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, steps);
    usePlatform(t, clock, fetch);
    const e = await rejection(clock.run(asyncRequest("/x")));
    assert.equal(e.kind, "protocol");
    assert.equal(fetch.calls.length, steps.length);
  }
});

test("protocol: a poll answered for another request id", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), accepted({ async_request_id: "someone-else" })]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "protocol");
});

test("overall timeout while a poll is in flight: kind timeout, the fetch is aborted", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted({}, { "retry-after": "1" }), hang]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 30000 })));
  assert.equal(e.kind, "timeout");
  assert.notEqual(e.kind, "failed");
  assert.match(e.message, /30000 ms/);
  assert.equal(clock.elapsed(), 30000);
  assert.equal(fetch.calls[1].signal.aborted, true, "in-flight poll aborted");
  assert.equal(clock.pending(), 0);
});

test("overall timeout while sleeping between polls, default 60 s", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, Array.from({ length: 100 }, () => accepted({}, { "retry-after": "7" })));
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x")));
  assert.equal(e.kind, "timeout");
  assert.equal(clock.elapsed(), DEFAULTS.timeout);
  assert.equal(DEFAULTS.timeout, 60000);
  assert.equal(clock.pending(), 0, "the sleep timer is cleared");
});

test("timeout during the start request aborts it", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [hang]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 5000 })));
  assert.equal(e.kind, "timeout");
  assert.equal(fetch.calls[0].signal.aborted, true);
});

test("a fetch that ignores its signal cannot outlive the timeout", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), () => new Promise(() => {})]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 2000 })));
  assert.equal(e.kind, "timeout");
});

test("abort before start: kind aborted, nothing sent", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, []);
  const ac = new AbortController();
  ac.abort(new Error("user left"));
  usePlatform(t, clock, fetch);
  const e = await rejection(asyncRequest("/x", { signal: ac.signal }));
  assert.equal(e.kind, "aborted");
  assert.equal(e.cause.message, "user left");
  assert.equal(fetch.calls.length, 0);
  assert.equal(clock.pending(), 0);
});

test("abort while a poll is in flight: kind aborted, the fetch is aborted", async (t) => {
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [
    accepted(),
    (call) => {
      setImmediate(() => ac.abort());
      return hang(call);
    },
  ]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { signal: ac.signal })));
  assert.equal(e.kind, "aborted");
  assert.equal(fetch.calls[1].signal.aborted, true);
  assert.equal(clock.pending(), 0, "sleep timers cleared");
});

test("abort while sleeping between polls", async (t) => {
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [
    () => {
      setImmediate(() => setImmediate(() => ac.abort()));
      return accepted({}, { "retry-after": "5" });
    },
  ]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { wait: 0, signal: ac.signal })));
  assert.equal(e.kind, "aborted");
  assert.equal(fetch.calls.length, 2, "the start, then the DELETE that cancels it on the server");
  assert.equal(fetch.calls[1].method, "DELETE");
  assert.equal(clock.elapsed(), 0, "did not wait for the 5 s");
});

test("abort during the start request", async (t) => {
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [(call) => (setImmediate(() => ac.abort()), hang(call))]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { signal: ac.signal })));
  assert.equal(e.kind, "aborted");
  assert.equal(fetch.calls[0].signal.aborted, true);
});

test("the overall timeout is an AbortSignal.timeout; its TimeoutError reaches the fetch", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), hang]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 1234.5 })));
  assert.equal(e.kind, "timeout");
  assert.deepEqual(clock.timeouts, [1235], "whole milliseconds, rounded up");
  assert.equal(fetch.calls[1].signal.reason.name, "TimeoutError");
});

test("the caller's own AbortSignal.timeout is an abort, not the overall timeout", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), hang]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 9000, signal: AbortSignal.timeout(3000) })));
  assert.equal(e.kind, "aborted");
  assert.equal(e.cause.name, "TimeoutError");
  assert.equal(clock.elapsed(), 3000);
});

test("without AbortSignal.any and AbortSignal.timeout (older browsers), timeout and abort still work", async (t) => {
  const { any, timeout } = Object.getOwnPropertyDescriptors(AbortSignal);
  for (const [key, descriptor] of [["any", any], ["timeout", timeout]]) {
    t.after(() => Object.defineProperty(AbortSignal, key, descriptor));
  }
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), hang]);
  usePlatform(t, clock, fetch);
  delete AbortSignal.any;
  delete AbortSignal.timeout;
  const e = await rejection(clock.run(asyncRequest("/x", { timeout: 4000 })));
  assert.equal(e.kind, "timeout");
  assert.equal(clock.elapsed(), 4000, "the fallback's timer runs on setTimeout");
  assert.equal(fetch.calls[1].signal.aborted, true);

  const clock2 = fakeClock();
  const ac = new AbortController();
  const fetch2 = fakeFetch(clock2, [accepted(), (call) => (setImmediate(() => ac.abort(new Error("left"))), hang(call))]);
  usePlatform(t, clock2, fetch2);
  delete AbortSignal.any;
  delete AbortSignal.timeout;
  const e2 = await rejection(clock2.run(asyncRequest("/x", { signal: ac.signal })));
  assert.equal(e2.kind, "aborted");
  assert.equal(e2.cause.message, "left");
  assert.equal(fetch2.calls[1].signal.aborted, true);
});

test("an error thrown by onProgress rejects the request with that error", async (t) => {
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted()]);
  const boom = new Error("UI bug");
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { onProgress: () => { throw boom; } })));
  assert.equal(e, boom);
  assert.equal(clock.pending(), 0);
});

test("no unhandled rejections on any error path, with real timers", async (t) => {
  const ac = new AbortController();
  // One scripted fetch per URL: the six requests run at once on the real clock.
  const scripts = {
    "/failed": fakeFetch(null, [accepted(), reply(422, FAILURE)]),
    "/network": fakeFetch(null, [accepted(), networkError(), networkError()]),
    "/timeout": fakeFetch(null, [accepted(), hang]),
    "/aborted": fakeFetch(null, [accepted(), (c) => (setTimeout(() => ac.abort(), 2), hang(c))]),
    "/protocol": fakeFetch(null, [reply(202, "nope")]),
    "/start": fakeFetch(null, [networkError()]),
  };
  usePlatform(t, null, (url, init) => scripts[url](url, init), () => 0.5);
  const runs = [
    asyncRequest("/failed"),
    asyncRequest("/network", { retries: 1 }),
    asyncRequest("/timeout", { timeout: 5 }),
    asyncRequest("/aborted", { signal: ac.signal }),
    asyncRequest("/protocol"),
    asyncRequest("/start"),
  ];
  const kinds = (await Promise.allSettled(runs)).map((r) => r.reason && r.reason.kind);
  assert.deepEqual(kinds, ["failed", "network", "timeout", "aborted", "protocol", "network"]);
  // Ordering, not a guess: Node runs timers in expiry order, so every timer of ≤ 20 ms the runs
  // left behind (1–2 ms backoff sleeps, the 2 ms abort, the 5 ms timeout) has fired before this
  // one, however slow the machine; flush then lets their rejections be reported.
  await new Promise((r) => setTimeout(r, 20));
  await flush(5);
  assert.deepEqual(unhandled, []);
});
