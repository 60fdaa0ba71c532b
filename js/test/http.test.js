// End to end over a real socket: Node's own fetch, real timers, a tiny node:http server that speaks
// the protocol. Delays are kept to a few milliseconds.
import test from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { asyncRequest } from "../../crates/async-endpoint/assets/async_endpoint.js";
import { flush, unhandled } from "../test-support/fakes.js";

async function withServer(handler, fn) {
  const seen = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      handler(req, res, seen.length - 1);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    return await fn(`http://127.0.0.1:${server.address().port}`, seen);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const json = (res, status, body, headers = {}) => {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
};
const accepted = (res, status, headers) =>
  json(res, 202, { async_request_id: "id-1", async_request_token: "tok-1", status, progress: null }, { "cache-control": "no-store", ...headers });

test("real fetch: start, held poll, final answer; id/token only in headers", async () => {
  const result = await withServer(
    (req, res, i) => {
      if (i === 0) return accepted(res, "queued", { "retry-after": "0" });
      if (i === 1) return setTimeout(() => accepted(res, "running", { "preference-applied": "wait=20" }), 20);
      json(res, 200, { some_data: "done" });
    },
    async (base, seen) => {
      const progress = [];
      const r = await asyncRequest(`${base}/my_endpoint?param_1=a`, {
        method: "POST",
        body: { param_1: "a" },
        onProgress: (p) => progress.push(p.status),
      });
      assert.deepEqual(progress, ["queued", "running"]);
      assert.equal(seen.length, 3);
      for (const s of seen) {
        assert.equal(s.method, "POST");
        assert.equal(s.url, "/my_endpoint?param_1=a");
        assert.equal(s.body, '{"param_1":"a"}');
      }
      assert.equal(seen[0].headers["async-request-id"], undefined);
      for (const s of seen.slice(1)) {
        assert.equal(s.headers["async-request-id"], "id-1");
        assert.equal(s.headers["async-request-token"], "tok-1");
        assert.equal(s.headers.prefer, "wait=20");
      }
      return r;
    },
  );
  assert.equal(result.status, 200);
  assert.deepEqual(result.body, { some_data: "done" });
  assert.equal(result.headers.get("content-type"), "application/json");
});

test("real fetch: 422 failure and a server that holds past the timeout", async () => {
  await withServer(
    (req, res, i) => (i === 0 ? accepted(res, "queued", { "retry-after": "0" }) : json(res, 422, { error: "nope" })),
    async (base) => {
      const e = await asyncRequest(base).catch((x) => x);
      assert.equal(e.kind, "failed");
      assert.deepEqual(e.body, { error: "nope" });
    },
  );
  // The client's timeout starts once the server holds the poll (the platform's
  // AbortSignal.timeout, started late), so the 50 ms timeout always fires during that poll,
  // however long the start and the poll take to travel on a loaded machine.
  let held, heldAt;
  const polled = new Promise((r) => (held = r));
  const afterPoll = (ms) => {
    const controller = new AbortController();
    const reason = new DOMException("signal timed out", "TimeoutError");
    polled.then(() => setTimeout(() => controller.abort(reason), ms));
    return controller.signal;
  };
  await withServer(
    (req, res, i) => {
      if (i === 0) return accepted(res, "queued", { "retry-after": "0" });
      heldAt = Date.now();
      held(); // and never answers
    },
    async (base, seen) => {
      const realTimeout = AbortSignal.timeout;
      AbortSignal.timeout = afterPoll;
      try {
        const e = await asyncRequest(base, { timeout: 50 }).catch((x) => x);
        assert.equal(e.kind, "timeout");
      } finally {
        AbortSignal.timeout = realTimeout;
      }
      // Its own 50 ms timeout stopped it: not the 20 s it asked the server to hold, nor the
      // 60 s default (the bound is generous for a loaded machine).
      assert.ok(Date.now() - heldAt < 15000, `${Date.now() - heldAt} ms`);
      assert.equal(seen.length, 2, "the timeout fired during the held poll");
    },
  );
});

test("no unhandled rejections in this file", async () => {
  await flush(5);
  assert.deepEqual(unhandled, []);
});
