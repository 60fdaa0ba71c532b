import test from "node:test";
import assert from "node:assert/strict";
import {
  asyncRequest, resumeAsyncRequest, saveState, loadState, clearState,
} from "../../crates/async-endpoint/assets/async_endpoint.js";
import { fakeClock, fakeFetch, usePlatform, reply, accepted, rejection, flush, unhandled, ID, TOKEN } from "../test-support/fakes.js";

/** A Storage double (the sessionStorage API). */
function memoryStorage() {
  const m = new Map();
  return {
    map: m,
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => void m.set(k, String(v)),
    removeItem: (k) => void m.delete(k),
  };
}

test("resume: a saved state polls the existing request at once and resolves", async (t) => {
  const clock = fakeClock();
  let state;
  const first = fakeFetch(clock, [accepted({}, { "retry-after": "1" }), () => new Promise(() => {})]);
  const ac = new AbortController();
  // the page starts a request, saves the state, then "reloads" (abandons the promise)
  usePlatform(t, clock, first);
  // `cancelOnAbort: false`: the abort only stands in for the page going away (no DELETE).
  const abandoned = asyncRequest("/slow", {
    method: "POST", body: "a=1", signal: ac.signal, cancelOnAbort: false, onStart: (s) => (state = s),
  });
  await flush();
  const storage = memoryStorage();
  assert.equal(saveState("job", state, storage), true);
  ac.abort();
  assert.equal((await rejection(clock.run(abandoned))).kind, "aborted");
  assert.equal(first.calls.length, 2, "no DELETE with cancelOnAbort: false");

  const loaded = loadState("job", storage);
  assert.deepEqual(loaded, { url: "/slow", method: "POST", id: ID, token: TOKEN, headers: {}, body: "a=1" });
  const clock2 = fakeClock();
  const fetch = fakeFetch(clock2, [accepted({ status: "running" }), reply(200, { result: 42 })]);
  const seen = [];
  usePlatform(t, clock2, fetch);
  const result = await clock2.run(resumeAsyncRequest(loaded, { onProgress: (p) => seen.push(p.status) }));
  assert.deepEqual(result.body, { result: 42 });
  assert.equal(result.id, ID);
  assert.equal(fetch.calls[0].at, 0, "first poll without delay");
  for (const c of fetch.calls) {
    assert.equal(c.url, "/slow");
    assert.equal(c.method, "POST");
    assert.equal(c.body, "a=1");
    assert.equal(c.headers.get("async-request-id"), ID);
    assert.equal(c.headers.get("async-request-token"), TOKEN);
  }
  assert.deepEqual(seen, ["running"]);
});

test("persistKey saves the state on start and clears it when the request settles", async (t) => {
  for (const [final, settles] of [[reply(200, {}), "resolves"], [reply(422, { error: "no" }), "rejects"]]) {
    const clock = fakeClock();
    const storage = memoryStorage();
    let duringPoll;
    const fetch = fakeFetch(clock, [
      accepted(),
      () => ((duringPoll = loadState("k", storage)), final),
    ]);
    usePlatform(t, clock, fetch);
    await clock.run(asyncRequest("/x", { persistKey: "k", storage })).catch(() => {});
    assert.equal(duringPoll.id, ID, settles);
    assert.equal(duringPoll.token, TOKEN);
    assert.equal(storage.map.size, 0, `cleared when the request ${settles}`);
  }
});

test("resumeAsyncRequest with persistKey clears the state when done", async (t) => {
  const clock = fakeClock();
  const storage = memoryStorage();
  saveState("k", { url: "/x", method: "GET", id: ID, token: TOKEN }, storage);
  const fetch = fakeFetch(clock, [reply(410, { title: "Gone" })]);
  usePlatform(t, clock, fetch);
  const e = await rejection(clock.run(resumeAsyncRequest(loadState("k", storage), { persistKey: "k", storage })));
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 410);
  assert.equal(loadState("k", storage), null);
});

test("state helpers tolerate missing, corrupt and failing storage", () => {
  const storage = memoryStorage();
  assert.equal(loadState("none", storage), null);
  storage.setItem("bad", "{not json");
  assert.equal(loadState("bad", storage), null);
  storage.setItem("partial", JSON.stringify({ url: "/x" }));
  assert.equal(loadState("partial", storage), null);
  const full = { setItem() { throw new Error("QuotaExceededError"); }, getItem: () => null, removeItem() { throw new Error("x"); } };
  assert.equal(saveState("k", { id: "a", token: "b" }, full), false);
  assert.doesNotThrow(() => clearState("k", full));
  assert.equal(saveState("k", { id: "a", token: "b" }, undefined), false, "no storage (Node) is not an error");
  saveState("k", { url: "/x", id: "a", token: "b" }, storage);
  clearState("k", storage);
  assert.equal(storage.getItem("k"), null);
});

test("resumeAsyncRequest rejects a state without id or token", async (t) => {
  usePlatform(t, null, () => assert.fail("must not fetch"));
  for (const bad of [null, {}, { url: "/x", id: "a" }, { id: "a", token: "b" }]) {
    const e = await rejection(resumeAsyncRequest(bad));
    assert.ok(e instanceof TypeError);
  }
});

test("CSRF: non-GET requests send the page's meta csrf-token as X-CSRF-Token", async (t) => {
  const metas = { 'meta[name="csrf-token"]': { getAttribute: (n) => (n === "content" ? "csrf-123" : null) } };
  globalThis.document = { querySelector: (sel) => metas[sel] || null };
  t.after(() => delete globalThis.document);
  const run = async (method, extra = {}) => {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, [accepted(), reply(200, {})]);
    usePlatform(t, clock, fetch);
    await clock.run(asyncRequest("/x", { method, ...extra }));
    return fetch.calls.map((c) => c.headers.get("x-csrf-token"));
  };
  assert.deepEqual(await run("POST"), ["csrf-123", "csrf-123"], "start and polls");
  assert.deepEqual(await run("DELETE"), ["csrf-123", "csrf-123"]);
  assert.deepEqual(await run("GET"), [null, null]);
  assert.deepEqual(await run("POST", { headers: { "X-CSRF-Token": "mine" } }), ["mine", "mine"], "the caller's header wins");
  delete metas['meta[name="csrf-token"]'];
  assert.deepEqual(await run("POST"), [null, null], "no meta, no header");
});

test("CSRF: the token is not sent to another origin", async (t) => {
  globalThis.document = { querySelector: () => ({ getAttribute: () => "csrf-123" }) };
  globalThis.location = new URL("https://app.example/page");
  t.after(() => {
    delete globalThis.document;
    delete globalThis.location;
  });
  const sent = async (url) => {
    const clock = fakeClock();
    const fetch = fakeFetch(clock, [reply(200, {})]);
    usePlatform(t, clock, fetch);
    await clock.run(asyncRequest(url, { method: "POST" }));
    return fetch.calls[0].headers.get("x-csrf-token");
  };
  assert.equal(await sent("/same"), "csrf-123");
  assert.equal(await sent("https://app.example/abs"), "csrf-123");
  assert.equal(await sent("https://evil.example/steal"), null);
});

test("no unhandled rejections in this file", async () => {
  await flush(5);
  assert.deepEqual(unhandled, []);
});
