// Test doubles for the async-endpoint client: a virtual clock, a scripted fetch and response
// builders. Lives outside test/ because `node --test test/` runs every .js file under test/.

/** Every unhandled rejection in this process; each test file asserts it stays empty. */
export const unhandled = [];
process.on("unhandledRejection", (e) => unhandled.push(e));

/** Let pending promise callbacks (and the client's awaits) run. */
export async function flush(turns = 3) {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/**
 * A virtual clock. Timers never fire on their own: `run(promise)` lets the client run until it
 * waits, then jumps to the earliest timer, fires it, and repeats until the promise settles.
 * `timeoutSignal(ms)` is `AbortSignal.timeout(ms)` on this clock: like the platform's, its timer
 * cannot be cleared, so `pending()` counts only `setTimeout` timers (the ones a client must clear).
 */
export function fakeClock(start = Date.UTC(2024, 0, 1)) {
  let now = start;
  let seq = 0;
  const timers = new Map();
  const add = (ms, fn, signal = false) => {
    const id = ++seq;
    timers.set(id, { at: now + Math.max(0, Number(ms) || 0), fn, signal });
    return id;
  };
  const clock = {
    /** every delay ever passed to setTimeout, in call order */
    delays: [],
    /** every delay ever passed to AbortSignal.timeout, in call order */
    timeouts: [],
    now: () => now,
    elapsed: () => now - start,
    pending: () => [...timers.values()].filter((t) => !t.signal).length,
    setTimeout: (fn, ms) => {
      clock.delays.push(ms);
      return add(ms, fn);
    },
    clearTimeout: (id) => void timers.delete(id),
    timeoutSignal: (ms) => {
      clock.timeouts.push(ms);
      const ctl = new AbortController();
      add(ms, () => ctl.abort(new DOMException("The operation was aborted due to timeout", "TimeoutError")), true);
      return ctl.signal;
    },
    async run(promise) {
      let settled = false;
      promise.then(
        () => (settled = true),
        () => (settled = true),
      );
      for (let i = 0; i < 100000; i++) {
        await flush();
        if (settled) return promise;
        if (timers.size === 0) throw new Error("fake clock: promise pending with no timer left");
        const [id, t] = [...timers].sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0];
        timers.delete(id);
        now = Math.max(now, t.at);
        t.fn();
      }
      throw new Error("fake clock: too many timers");
    },
  };
  return clock;
}

let restorePlatform = null;

/**
 * Puts fakes where the client finds the platform, until test `t` ends: `fetch` becomes
 * `globalThis.fetch`; with a clock, `setTimeout`/`clearTimeout`, `Date.now` and `AbortSignal.timeout`
 * run on it; `Math.random` returns `random()` (0 by default, which makes backoff exact). Calling it
 * again in the same test swaps in other fakes. Tests stub the globals the client calls rather than
 * pass it test options; node:test runs the tests of a file one at a time, so this is safe.
 */
export function usePlatform(t, clock, fetch, random = () => 0) {
  if (restorePlatform) restorePlatform();
  const saved = [];
  const patch = (obj, key, value) => {
    saved.push([obj, key, Object.getOwnPropertyDescriptor(obj, key)]);
    Object.defineProperty(obj, key, { value, writable: true, configurable: true });
  };
  patch(globalThis, "fetch", fetch);
  patch(Math, "random", random);
  if (clock) {
    patch(globalThis, "setTimeout", clock.setTimeout);
    patch(globalThis, "clearTimeout", clock.clearTimeout);
    patch(Date, "now", clock.now);
    patch(AbortSignal, "timeout", clock.timeoutSignal);
  }
  const restore = () => {
    for (const [obj, key, descriptor] of saved.reverse()) Object.defineProperty(obj, key, descriptor);
    if (restorePlatform === restore) restorePlatform = null;
  };
  restorePlatform = restore;
  t.after(() => restorePlatform === restore && restore());
}

/**
 * The client's backoff when the server gives no hint, as js/README.md documents it: 250 ms growing
 * ×1.5 to a 5 s cap (which also clamps Retry-After), each delay reduced by a random 0..25 %.
 */
export const BACKOFF = Object.freeze({ minDelay: 250, maxDelay: 5000, factor: 1.5, jitter: 0.25 });

/** A response double: what the client reads (status, headers.get, text()). */
export function reply(status, body, headers = {}) {
  const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
  return { status, ok: status >= 200 && status < 300, headers: new Headers(headers), text: async () => text };
}

export const ID = "0f8b5c1e9d2a4b6c8e0f1a2b3c4d5e6f";
export const TOKEN = "v1.tok-en_secret";

/** A protocol 202 (start or poll). */
export function accepted(fields = {}, headers = {}) {
  const body = { async_request_id: ID, async_request_token: TOKEN, status: "queued", progress: null, ...fields };
  return reply(202, body, { "content-type": "application/json", "cache-control": "no-store", ...headers });
}

export function problem(status, title) {
  return reply(status, { type: "about:blank", title, status }, { "content-type": "application/problem+json" });
}

/** A fetch that never answers until its signal aborts, like a real fetch held by a server. */
export function hang(call) {
  return new Promise((_, reject) => {
    call.signal.addEventListener("abort", () => reject(new DOMException("This operation was aborted", "AbortError")), {
      once: true,
    });
  });
}

export const networkError = () => new TypeError("fetch failed");

/**
 * A scripted fetch. `steps[i]` answers call i: a response double, an Error (thrown), or a function
 * `(call) => response | Promise`. Records every call with its virtual time in `fetch.calls`.
 */
export function fakeFetch(clock, steps) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const call = {
      url: String(url),
      method: init.method,
      headers: new Headers(init.headers),
      body: init.body,
      signal: init.signal,
      init,
      at: clock ? clock.elapsed() : 0,
    };
    calls.push(call);
    const step = steps[calls.length - 1];
    if (step === undefined) throw new Error(`fake fetch: unexpected call #${calls.length}`);
    const r = typeof step === "function" ? await step(call) : step;
    if (r instanceof Error) throw r;
    return r;
  };
  fetch.calls = calls;
  return fetch;
}

/** Await a rejection and return the error (fails if it resolves). */
export async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection, got a resolution");
}

/** Gaps in virtual ms between consecutive fetch calls. */
export function gaps(fetch) {
  return fetch.calls.slice(1).map((c, i) => c.at - fetch.calls[i].at);
}
