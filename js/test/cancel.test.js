import test from "node:test";
import assert from "node:assert/strict";
import { asyncRequest, installJQuery } from "../../crates/async-endpoint/assets/async_endpoint.js";
import {
  fakeClock, fakeFetch, usePlatform, reply, accepted, hang, networkError, rejection, flush, unhandled, ID, TOKEN,
} from "../test-support/fakes.js";

// Cancellation: aborting the caller's `signal` once the start has answered with an id and token
// sends `DELETE` to the same URL with the id and token headers, so the server cancels the job.

/** A minimal jQuery: just `Deferred()` with resolve/reject/promise and done/fail/always/then. */
function fakeJQuery() {
  function Deferred() {
    let state = "pending";
    let args = [];
    const lists = { resolved: [], rejected: [], always: [], progress: [] };
    const add = (which, when) =>
      function (...fns) {
        for (const f of fns.flat()) state === "pending" ? lists[which].push(f) : when(state) && f(...args);
        return this;
      };
    const promise = {
      state: () => state,
      done: add("resolved", (s) => s === "resolved"),
      fail: add("rejected", (s) => s === "rejected"),
      always: add("always", () => true),
      progress(...fns) {
        lists.progress.push(...fns.flat());
        return this;
      },
      then(ok, ko) {
        const next = Deferred();
        const wrap = (fn, settle) => (...a) => {
          try {
            fn ? next.resolve(fn(...a)) : settle(...a);
          } catch (e) {
            next.reject(e);
          }
        };
        this.done(wrap(ok, next.resolve));
        this.fail(wrap(ko, next.reject));
        return next.promise();
      },
      promise: () => promise,
    };
    // Like jQuery: the Deferred is itself a thenable and resolve/reject return it.
    const deferred = { ...promise, promise: () => promise };
    const settle = (s) => (...a) => {
      if (state !== "pending") return deferred;
      state = s;
      args = a;
      for (const f of [...lists[s], ...lists.always]) f(...a);
      return deferred;
    };
    const notify = (...a) => {
      if (state === "pending") for (const f of lists.progress) f(...a);
      return deferred;
    };
    return Object.assign(deferred, { resolve: settle("resolved"), reject: settle("rejected"), notify });
  }
  return { Deferred };
}


/** A fetch step that aborts `ac` once the client is waiting on it, then hangs like a held poll. */
const abortWhileWaiting = (ac) => (call) => (setImmediate(() => ac.abort(new Error("user stopped"))), hang(call));

test("abort while polling: DELETE with id and token to the same URL, fire-and-forget; rejects aborted", async (t) => {
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [accepted(), abortWhileWaiting(ac), reply(202, { status: "failed" })]);
  usePlatform(t, clock, fetch);
  const e = await rejection(
    clock.run(asyncRequest("/export?x=1", { method: "POST", body: { rows: 5 }, headers: { "X-Extra": "kept" }, signal: ac.signal })),
  );
  assert.equal(e.kind, "aborted");
  assert.equal(e.cause.message, "user stopped");
  assert.equal(fetch.calls.length, 3);
  const del = fetch.calls[2];
  assert.equal(del.method, "DELETE");
  assert.equal(del.url, "/export?x=1");
  assert.equal(del.headers.get("async-request-id"), ID);
  assert.equal(del.headers.get("async-request-token"), TOKEN);
  assert.equal(del.headers.get("x-extra"), "kept", "the caller's headers go along (auth, owner)");
  assert.equal(del.headers.get("content-type"), null);
  assert.equal(del.body, undefined, "no body");
  assert.equal(del.init.keepalive, true, "goes out even while the page is left");
  assert.equal(del.signal, undefined, "not tied to the aborted signal");
  assert.equal(clock.pending(), 0);
});

test("abort while sleeping between polls also cancels on the server", async (t) => {
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [
    () => (setImmediate(() => setImmediate(() => ac.abort())), accepted({}, { "retry-after": "5" })),
    reply(202, { status: "failed" }),
  ]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { wait: 0, signal: ac.signal })));
  assert.equal(e.kind, "aborted");
  assert.deepEqual(fetch.calls.map((c) => c.method), ["GET", "DELETE"]);
});

test("a resumed request is cancelled the same way", async (t) => {
  const { resumeAsyncRequest } = await import("../../crates/async-endpoint/assets/async_endpoint.js");
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [abortWhileWaiting(ac), reply(202, {})]);
  usePlatform(t, clock, fetch);
  const state = { url: "/slow", method: "GET", id: ID, token: TOKEN };
  const e = await rejection(clock.run(resumeAsyncRequest(state, { signal: ac.signal })));
  assert.equal(e.kind, "aborted");
  assert.equal(fetch.calls[1].method, "DELETE");
  assert.equal(fetch.calls[1].headers.get("async-request-token"), TOKEN);
});

test("no DELETE before the start answered, on the overall timeout, or with cancelOnAbort: false", async (t) => {
  // Abort during the start: no id yet, nothing to cancel.
  let clock = fakeClock();
  let ac = new AbortController();
  let fetch = fakeFetch(clock, [abortWhileWaiting(ac)]);
  usePlatform(t, clock, fetch);
  assert.equal((await rejection(clock.run(asyncRequest("/x", { signal: ac.signal })))).kind, "aborted");
  assert.equal(fetch.calls.length, 1);
  // The overall timeout: the job may still finish; it is not cancelled.
  clock = fakeClock();
  fetch = fakeFetch(clock, [accepted(), hang]);
  usePlatform(t, clock, fetch);
  assert.equal((await rejection(clock.run(asyncRequest("/x", { timeout: 3000 })))).kind, "timeout");
  assert.equal(fetch.calls.length, 2);
  // Opted out: the abort only stops polling.
  clock = fakeClock();
  ac = new AbortController();
  fetch = fakeFetch(clock, [accepted(), abortWhileWaiting(ac)]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(asyncRequest("/x", { signal: ac.signal, cancelOnAbort: false })));
  assert.equal(e.kind, "aborted");
  assert.equal(fetch.calls.length, 2);
});

test("a DELETE that fails (network error) is ignored", async (t) => {
  const clock = fakeClock();
  const ac = new AbortController();
  const fetch = fakeFetch(clock, [accepted(), abortWhileWaiting(ac), networkError()]);
  usePlatform(t, clock, fetch);
  assert.equal((await rejection(clock.run(asyncRequest("/x", { signal: ac.signal })))).kind, "aborted");
  await flush(5);
  assert.equal(fetch.calls[2].method, "DELETE");
});

test("jQuery: promise.abort() stops polling and cancels on the server", async (t) => {
  const $ = installJQuery(fakeJQuery());
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), hang, reply(202, {})]);
  usePlatform(t, clock, fetch);
  const p = $.getAsyncRequest("/my_endpoint", 10000);
  const failed = [];
  assert.equal(p.fail((payload, e) => failed.push([payload.kind, e.kind])), p);
  await flush(5);
  assert.equal(p.abort(), p, "chainable");
  await clock.run(new Promise((r) => p.always(() => r())));
  assert.deepEqual(failed, [["aborted", "aborted"]]);
  assert.equal(fetch.calls[2].method, "DELETE");
  assert.equal(fetch.calls[2].headers.get("async-request-id"), ID);
});

test("no unhandled rejections in this file", async () => {
  await flush(5);
  assert.deepEqual(unhandled, []);
});
