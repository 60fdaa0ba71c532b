import test from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { installJQuery, errorPayload, AsyncRequestError } from "../../crates/async-endpoint/assets/async_endpoint.js";
import { fakeClock, fakeFetch, usePlatform, reply, accepted, hang, networkError, flush, unhandled } from "../test-support/fakes.js";

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

/** Wait for a jQuery promise under the fake clock. */
const settled = (clock, p) => clock.run(new Promise((r) => p.always(() => r())));

test("installJQuery adds $.getAsyncRequest; success gets the final body; chainable", async (t) => {
  const $ = fakeJQuery();
  assert.equal(installJQuery($), $);
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), accepted({ status: "running" }), reply(200, { some_data: "x" })]);
  const got = { success: [], done: [], always: 0, error: 0, fail: 0 };
  usePlatform(t, clock, fetch);
  const p = $.getAsyncRequest("/my_endpoint", 10000);
  assert.equal(typeof p.resolve, "undefined", "a promise, not the Deferred");
  const chained = p
    .success(function (r) { got.success.push(r); })
    .error(function () { got.error++; })
    .done((r, full) => got.done.push([r, full.status]))
    .fail(() => got.fail++)
    .always(() => got.always++);
  assert.equal(chained, p, "success/error/done/fail/always return the same promise");
  const thenValue = p.then((r) => r.some_data);
  await settled(clock, p);
  assert.deepEqual(got.success, [{ some_data: "x" }]);
  assert.deepEqual(got.done, [[{ some_data: "x" }, 200]]);
  assert.equal(got.always, 1);
  assert.equal(got.error + got.fail, 0);
  let v;
  thenValue.done((x) => (v = x));
  assert.equal(v, "x");
});

test("error gets the parsed failure body (422)", async (t) => {
  const $ = installJQuery(fakeJQuery());
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), reply(422, { error: "My custom error message" })]);
  const errors = [];
  const fails = [];
  let success = 0;
  usePlatform(t, clock, fetch);
  const p = $.getAsyncRequest("/x", 10000)
    .success(() => success++)
    .error((r) => errors.push(r))
    .fail((r, e) => fails.push(e));
  await settled(clock, p);
  assert.equal(success, 0);
  assert.deepEqual(errors, [{ error: "My custom error message" }]);
  assert.ok(fails[0] instanceof AsyncRequestError);
  assert.equal(fails[0].status, 422);
});

test("error gets a clear object on timeout, tells it apart from failure", async (t) => {
  const $ = installJQuery(fakeJQuery());
  const clock = fakeClock();
  const fetch = fakeFetch(clock, [accepted(), hang]);
  let err;
  usePlatform(t, clock, fetch);
  const p = $.getAsyncRequest("/x", 10000).error((r) => (err = r));
  await settled(clock, p);
  assert.equal(clock.elapsed(), 10000, "the second argument is the timeout in ms");
  assert.equal(err.error, "timeout");
  assert.equal(err.kind, "timeout");
  assert.match(err.message, /timed out after 10000 ms/);
});

test("error objects for network, protocol, abort and a problem without JSON", async (t) => {
  const cases = [
    [[networkError()], {}, "network"],
    [[reply(202, "not json")], {}, "protocol"],
    [[accepted(), reply(500, "oops")], {}, "failed"],
  ];
  for (const [steps, extra, kind] of cases) {
    const $ = installJQuery(fakeJQuery());
    const clock = fakeClock();
    let err;
    usePlatform(t, clock, fakeFetch(clock, steps));
    const p = $.getAsyncRequest("/x", undefined, extra).error((r) => (err = r));
    await settled(clock, p);
    assert.equal(err.error, kind);
    assert.equal(err.kind, kind);
    assert.equal(typeof err.message, "string");
  }
  const aborted = errorPayload(new AsyncRequestError("aborted", "async request aborted"));
  assert.deepEqual(aborted, { error: "aborted", kind: "aborted", status: 0, message: "async request aborted" }); // 0: like a jqXHR without an answer
  assert.equal(errorPayload(new AsyncRequestError("failed", "x", { status: 500, body: "oops" })).status, 500);
});

test("verbatim 2016 call with the global fetch: $.getAsyncRequest(url, 10000).success(...).error(...)", async (t) => {
  const saved = globalThis.fetch;
  const fetch = fakeFetch(null, [accepted({}, { "retry-after": "0" }), reply(200, { some_data: "v" })]);
  globalThis.fetch = fetch;
  t.after(() => (globalThis.fetch = saved));
  const $ = installJQuery(fakeJQuery());
  const result = await new Promise((resolve, reject) => {
    $.getAsyncRequest("/my_endpoint", 10000)
      .success(function (r) { resolve(r); })
      .error(function (r) { reject(r); });
  });
  assert.deepEqual(result, { some_data: "v" });
  assert.equal(fetch.calls[1].headers.get("prefer"), "wait=20");
});

test("installs itself at load when globalThis.jQuery exists", async (t) => {
  const $ = fakeJQuery();
  globalThis.jQuery = $;
  t.after(() => delete globalThis.jQuery);
  await import("../../crates/async-endpoint/assets/async_endpoint.js?autoinstall");
  assert.equal(typeof $.getAsyncRequest, "function");
});

// Real jQuery 3 when one is on this machine (Debian's libjs-jquery, or JQUERY_PATH): proves the
// added .success/.error work on a genuine jQuery 3 promise, whose own jqXHR lost them.
const JQUERY = process.env.JQUERY_PATH || "/usr/share/javascript/jquery/jquery.js";
test("real jQuery 3: .success/.error/.done/.always", { skip: !existsSync(JQUERY) && `no jQuery at ${JQUERY}` }, async (t) => {
  const factory = createRequire(import.meta.url)(JQUERY);
  const $ = factory(permissiveWindow());
  assert.match($.fn.jquery, /^3\./);
  assert.equal(typeof $.Deferred().promise().success, "undefined", "jQuery 3 has no success of its own");
  installJQuery($);
  const run = async (steps) => {
    const clock = fakeClock();
    const out = {};
    usePlatform(t, clock, fakeFetch(clock, steps));
    const p = $.getAsyncRequest("/x", 10000)
      .progress((u) => (out.progress = u.progress))
      .success((r) => (out.success = r))
      .error((r) => (out.error = r))
      .always(() => (out.always = true));
    await clock.run(new Promise((r) => p.always(r)));
    out.state = p.state();
    return out;
  };
  assert.deepEqual(await run([accepted(), reply(200, { a: 1 })]), { progress: null, success: { a: 1 }, always: true, state: "resolved" });
  const step = { at: 1, total: 2, percent: 50, message: "half" };
  const withProgress = await run([accepted(), accepted({ status: "running", progress: step }), reply(200, { a: 2 })]);
  assert.deepEqual(withProgress.progress, step, "jQuery's .progress(fn) receives progress updates");
  assert.deepEqual(await run([accepted(), reply(422, { error: "no" })]), { progress: null, error: { error: "no" }, always: true, state: "rejected" });
  const timedOut = await run([accepted(), hang]);
  assert.equal(timedOut.error.kind, "timeout");
});

/** Enough of a browser window for jQuery's load-time feature probes: every DOM property is a stub. */
function permissiveWindow() {
  const stub = (name) => {
    const store = {};
    return new Proxy(function () {}, {
      get(_, k) {
        if (k in store) return store[k];
        if (typeof k === "symbol" || k === "then") return undefined;
        if (k === "nodeType") return name === "document" ? 9 : 1;
        if (k === "length") return 0;
        return (store[k] = stub(k));
      },
      set: (_, k, v) => ((store[k] = v), true),
      apply: () => stub("call"),
      construct: () => stub("new"),
    });
  };
  const document = stub("document");
  document.readyState = "complete";
  const window = { document, location: { href: "http://app.example/" }, setTimeout, clearTimeout };
  for (const k of ["Symbol", "Array", "Object", "JSON", "Math", "Date", "RegExp", "String", "Number", "Error"]) window[k] = globalThis[k];
  window.addEventListener = window.removeEventListener = () => {};
  return (window.window = window);
}

test("no unhandled rejections in this file", async () => {
  await flush(5);
  assert.deepEqual(unhandled, []);
});
