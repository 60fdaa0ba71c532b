// The shared event stream (one connection per page for every pending request) and the budget of
// waiting polls per origin when there is no stream; the jQuery alias and jqXHR-like error fields.
import test from "node:test";
import assert from "node:assert/strict";
import {
  asyncRequest,
  eventStreamParser,
  streamLink,
  errorPayload,
  installJQuery,
  AsyncRequestError,
  MAX_WAITING_POLLS,
} from "../../crates/async-endpoint/assets/async_endpoint.js";
import { fakeClock, usePlatform, reply, accepted, flush, unhandled, ID, TOKEN } from "../test-support/fakes.js";

const LINK = '</async-endpoint/stream>; rel="async-endpoint-stream"';

/** A streamed response: `chunks` are strings, or "CUT" to break the connection there. */
function eventStream(chunks) {
  const encoder = new TextEncoder();
  let next = 0;
  // One chunk per read, so a cut comes after the chunks before it were read.
  const body = new ReadableStream({
    pull(controller) {
      const chunk = chunks[next++];
      if (chunk === undefined) controller.close();
      else if (chunk === "CUT") controller.error(new TypeError("network error"));
      else controller.enqueue(encoder.encode(chunk));
    },
  });
  return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
}

const ev = (name, data) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;

/** A fetch routed by a handler; records every call. */
function routed(clock, handler) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const call = { url: String(url), method: init.method, headers: new Headers(init.headers), body: init.body, signal: init.signal, at: clock.elapsed() };
    calls.push(call);
    const r = await handler(call, calls);
    if (r instanceof Error) throw r;
    return r;
  };
  fetch.calls = calls;
  return fetch;
}

test("the parser: chunks split anywhere, CRLF and CR, comments, multi-line data, retry", () => {
  const p = eventStreamParser();
  assert.deepEqual(p.push("retry: 500\n\n: heartbeat\n\nevent: st"), []);
  assert.deepEqual(p.push('ate\ndata: {"a":1}\r'), []);
  assert.deepEqual(p.push("\n\r\n"), [{ event: "state", data: '{"a":1}', retry: 500 }]);
  assert.deepEqual(p.push("data: x\ndata:y\n\nevent:done\rdata\r\r"), [{ event: "message", data: "x\ny", retry: 500 }]);
  // A CR at the end of a chunk may be the first half of a CRLF: it ends the line once the next chunk comes.
  assert.deepEqual(p.push("\n"), [{ event: "done", data: "", retry: 500 }]);
  assert.deepEqual(p.push("event: lost\n\n"), [], "an event without data is not dispatched");
});

test("the Link header names the stream, resolved against the request's URL", () => {
  assert.equal(streamLink(LINK, "https://a.example/jobs/1"), "https://a.example/async-endpoint/stream");
  assert.equal(streamLink('<https://b.example/s>; rel="next", </x>; rel="prev async-endpoint-stream"', "https://a.example/"), "https://a.example/x");
  assert.equal(streamLink("</x>; rel=async-endpoint-stream", "https://a.example/"), "https://a.example/x");
  assert.equal(streamLink('</x>; rel="next"', "https://a.example/"), null);
  assert.equal(streamLink(null, "https://a.example/"), null);
});

test("a 202 naming a stream: followed over it (state, progress), then one poll for the answer", async (t) => {
  const clock = fakeClock();
  const progress = [];
  const fetch = routed(clock, (call, calls) => {
    if (call.url.endsWith("/async-endpoint/stream")) {
      return eventStream([
        "retry: 1000\n\n",
        ev("state", { async_request_id: ID, status: "running", progress: { at: 1, total: 2 } }),
        ": heartbeat\n\n",
        ev("finished", { async_request_id: ID, status: "done" }),
      ]);
    }
    return calls.length === 1 ? accepted({}, { link: LINK }) : reply(200, { ok: true });
  });
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("https://s1.example/job", { onProgress: (p) => progress.push(p) }));
  assert.deepEqual(result.body, { ok: true });
  assert.deepEqual(fetch.calls.map((c) => `${c.method} ${new URL(c.url).pathname}`), ["GET /job", "POST /async-endpoint/stream", "GET /job"]);
  const stream = fetch.calls[1];
  assert.deepEqual(JSON.parse(stream.body), { requests: [{ async_request_id: ID, async_request_token: TOKEN }] });
  assert.equal(stream.headers.get("content-type"), "application/json");
  assert.ok(!stream.url.includes(TOKEN), "no credentials in the URL");
  assert.equal(fetch.calls[2].headers.get("async-request-id"), ID);
  assert.deepEqual(progress.map((p) => p.status), ["queued", "running"]);
  assert.deepEqual(progress[1].progress, { at: 1, total: 2 });
});

test("many requests share one stream, re-opened with the whole set when one joins", async (t) => {
  const clock = fakeClock();
  const ids = ["a1", "b2", "c3"];
  let started = 0;
  const streams = [];
  const fetch = routed(clock, (call) => {
    if (call.url.endsWith("/async-endpoint/stream")) {
      const set = JSON.parse(call.body).requests.map((r) => r.async_request_id);
      streams.push(set);
      // Only the stream with the whole set says they finished; others stay open until aborted.
      if (set.length < 3) return new Promise((_, reject) => call.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));
      return eventStream(set.map((id) => ev("finished", { async_request_id: id, status: "done" })));
    }
    const id = call.headers.get("async-request-id");
    if (!id) {
      const mine = ids[started++];
      return accepted({ async_request_id: mine, async_request_token: `t-${mine}` }, { link: LINK });
    }
    return reply(200, { id });
  });
  usePlatform(t, clock, fetch);
  const results = await clock.run(Promise.all(ids.map(() => asyncRequest("https://s2.example/job"))));
  assert.deepEqual(results.map((r) => r.body.id).sort(), ids);
  assert.deepEqual(streams.at(-1).sort(), ids);
  const polls = fetch.calls.filter((c) => c.headers.get("async-request-id"));
  assert.equal(polls.length, 3, "one poll per request, for its answer");
});

test("a stream cut mid-way is re-opened (state first again) and every result arrives", async (t) => {
  const clock = fakeClock();
  let streamCalls = 0;
  const fetch = routed(clock, (call, calls) => {
    if (call.url.endsWith("/async-endpoint/stream")) {
      streamCalls++;
      if (streamCalls === 1) return eventStream([ev("state", { async_request_id: ID, status: "running" }), "CUT"]);
      return eventStream([ev("state", { async_request_id: ID, status: "running" }), ev("finished", { async_request_id: ID, status: "done" })]);
    }
    return calls.length === 1 ? accepted({}, { link: LINK }) : reply(200, "done");
  });
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("https://s3.example/job"));
  assert.equal(result.body, "done");
  assert.equal(streamCalls, 2);
});

test("not_found on the stream: one poll, whose problem is the error (as for any bad credential)", async (t) => {
  const clock = fakeClock();
  const fetch = routed(clock, (call, calls) => {
    if (call.url.endsWith("/async-endpoint/stream")) return eventStream([ev("not_found", { async_request_id: ID })]);
    return calls.length === 1 ? accepted({}, { link: LINK }) : reply(410, { status: 410, title: "Gone" });
  });
  usePlatform(t, clock, fetch);
  const e = await clock.run(asyncRequest("https://s6.example/job")).catch((e) => e);
  assert.equal(e.kind, "failed");
  assert.equal(e.status, 410);
  assert.equal(fetch.calls.length, 3);
});

test("a stream the server ends (reconnect, its lifetime) is opened again at once, states first", async (t) => {
  const clock = fakeClock();
  let opened = 0;
  const progress = [];
  const fetch = routed(clock, (call, calls) => {
    if (call.url.endsWith("/async-endpoint/stream")) {
      opened++;
      const state = ev("state", { async_request_id: ID, status: "running", progress: { at: opened } });
      if (opened === 1) return eventStream([state, "event: reconnect\ndata: {}\n\n"]);
      return eventStream([state, ev("finished", { async_request_id: ID, status: "done" })]);
    }
    return calls.length === 1 ? accepted({}, { link: LINK }) : reply(200, "ok");
  });
  usePlatform(t, clock, fetch);
  const started = clock.elapsed();
  await clock.run(asyncRequest("https://s7.example/job", { onProgress: (p) => progress.push(p.progress && p.progress.at) }));
  assert.equal(opened, 2);
  assert.deepEqual(progress, [null, 1, 2]);
  const streams = fetch.calls.filter((c) => c.url.endsWith("/async-endpoint/stream"));
  assert.ok(streams[1].at - streams[0].at < 1000, "re-opened without the retry delay");
  assert.ok(clock.elapsed() - started < 1000);
});

test("a server without the stream (404): the request falls back to polling", async (t) => {
  const clock = fakeClock();
  const fetch = routed(clock, (call, calls) => {
    if (call.url.endsWith("/async-endpoint/stream")) return reply(404, "no");
    return calls.length === 1 ? accepted({}, { link: LINK }) : reply(200, "polled");
  });
  usePlatform(t, clock, fetch);
  const result = await clock.run(asyncRequest("https://s4.example/job"));
  assert.equal(result.body, "polled");
  assert.equal(fetch.calls.at(-1).headers.get("prefer"), "wait=20", "a waiting poll: one slot is free");
});

test(`without a stream, at most ${MAX_WAITING_POLLS} waiting polls per origin; the rest short-poll with Retry-After`, async (t) => {
  const clock = fakeClock();
  let held = 0;
  let most = 0;
  let started = 0;
  const finishAt = 10000;
  const fetch = routed(clock, async (call) => {
    const id = call.headers.get("async-request-id");
    if (!id) {
      started++;
      return accepted({ async_request_id: `r${started}`, async_request_token: "t" }, { "retry-after": "1" });
    }
    if (clock.elapsed() >= finishAt) return reply(200, { id });
    if (!call.headers.get("prefer")) return accepted({ async_request_id: id }, { "retry-after": "1" });
    held++;
    most = Math.max(most, held);
    // A held poll: answered after 2 s (virtual), with no change.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    held--;
    return accepted({ async_request_id: id }, { "retry-after": "1", "preference-applied": "wait=20" });
  });
  usePlatform(t, clock, fetch);
  const results = await clock.run(Promise.all(Array.from({ length: 6 }, () => asyncRequest("https://s5.example/job"))));
  assert.equal(results.length, 6);
  assert.equal(most, MAX_WAITING_POLLS);
  const starts = fetch.calls.filter((c) => !c.headers.get("async-request-id"));
  assert.ok(starts.filter((c) => c.headers.get("prefer")).length <= MAX_WAITING_POLLS, "held starts count too");
});

test("$.getAsyncEndpoint is $.getAsyncRequest; the error argument carries status, responseJSON, responseText", () => {
  const $ = installJQuery({ Deferred() {} });
  assert.equal($.getAsyncEndpoint, $.getAsyncRequest);
  const body = { error: "bad input" };
  const payload = errorPayload(new AsyncRequestError("failed", "x", { status: 422, body }));
  assert.deepEqual(payload, body, "the body's own fields, unchanged");
  assert.equal(payload.status, 422);
  assert.deepEqual(payload.responseJSON, body);
  assert.equal(payload.responseText, JSON.stringify(body));
  const text = errorPayload(new AsyncRequestError("failed", "x", { status: 500, body: "oops" }));
  assert.equal(text.status, 500);
  assert.equal(text.responseText, "oops");
  assert.equal(text.responseJSON, undefined);
  const problem = errorPayload(new AsyncRequestError("failed", "x", { status: 404, body: { status: 404, title: "Not Found" } }));
  assert.equal(problem.status, 404);
  assert.equal(errorPayload(new AsyncRequestError("network", "x")).status, 0);
});

test("no unhandled rejections in this file", async () => {
  await flush();
  assert.deepEqual(unhandled, []);
});
