/**
 * async-endpoint JS client: asynchronous request-reply over `fetch`, with no dependencies.
 *
 * Start a request, get `202 Accepted` with an id and a token, poll until the final answer arrives.
 * Uses waiting polls (`Prefer: wait=N`) when the server honours them, honours `Retry-After`
 * otherwise, and backs off with jitter to a cap when neither is there. The id and token travel
 * in headers (`Async-Request-Id`, `Async-Request-Token`), never in the URL. Every start carries a
 * fresh `Idempotency-Key`, re-sent on the client's own retries of that start, so a retried start
 * never starts a second job.
 *
 * ```js
 * import { asyncRequest } from "/async_endpoint.js";
 * const { body } = await asyncRequest("/my_endpoint", { onProgress: ({ progress }) => show(progress) });
 * ```
 *
 * One connection per page: when a 202 names the server's event stream (`Link: <…>;
 * rel="async-endpoint-stream"`), every pending request of the page to that server is followed over
 * one shared stream (server-sent events read with `fetch`, ids and tokens in the body), and a
 * request's final answer is fetched with one poll when the stream says it `finished`. Without a
 * stream, at most {@link MAX_WAITING_POLLS} waiting polls are held per origin and the other requests
 * short-poll with `Retry-After`, so pending requests never take all of the browser's six connections.
 *
 * When `globalThis.jQuery` is present at load time it also gets `$.getAsyncRequest(url, timeoutMs)`
 * and its alias `$.getAsyncEndpoint` (see {@link installJQuery}).
 *
 * @module async-endpoint
 */

/**
 * Defaults of the options. `timeout` in milliseconds, `wait` in seconds.
 * @type {Readonly<{timeout: number, wait: number, retries: number}>}
 */
export const DEFAULTS = Object.freeze({
  timeout: 60000, // overall bound for the whole request, start to final answer
  wait: 20, // seconds asked for with `Prefer: wait=N`; 0 sends no Prefer header
  retries: 5, // consecutive 502/503/504 or network errors tolerated while starting (same key) and polling; 429s on a start
});

/**
 * The delay between polls when the server gives no hint (no held poll, no `Retry-After`): 250 ms
 * growing ×1.5 to a 5 s cap, each delay reduced by a random 0..25 %. The cap also clamps `Retry-After`.
 * Not options: the server sets the pace (waiting polls, `Retry-After`); this is only the fallback.
 */
const BACKOFF = Object.freeze({ min: 250, max: 5000, factor: 1.5, jitter: 0.25 });

/** The longest delay a timer takes (2^31 - 1 ms, about 24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2147483647;

const TRANSIENT = new Set([502, 503, 504]);

/**
 * Waiting polls (and held starts) one origin gets at once; the page's other requests to it
 * short-poll with `Retry-After`. Browsers open six HTTP/1.1 connections per origin: this leaves
 * four for everything else.
 */
export const MAX_WAITING_POLLS = 2;

/** The `rel` of the `Link` header that names the server's event stream. */
const STREAM_REL = "async-endpoint-stream";
/** Requests one stream follows (the server's default limit); the others poll. */
const STREAM_MAX_REQUESTS = 100;
/** Time to gather the starts of one burst before (re)opening the stream with all of them. */
const STREAM_GATHER_MS = 20;
/** Consecutive failed attempts to open a stream after which its requests fall back to polling. */
const STREAM_ATTEMPTS = 3;
/** How long a stream that failed is not tried again (new requests poll meanwhile). */
const STREAM_PAUSE_MS = 30000;
/**
 * Start answers after which the start is sent again (after `Retry-After`, at most `retries` times,
 * within `timeout`): 429 is the server's push-back (too many pending requests), and nothing was
 * stored or enqueued, so sending the start again cannot run a job twice.
 */
const START_RETRIED = new Set([429]);
/**
 * Seconds a start asks to be held (`Prefer: wait=N`, capped by the `wait` option): a job done
 * within it costs one request, and a longer one still gets its id (for `onStart` and resuming) and
 * its progress (through waiting polls) after at most this long.
 */
const START_WAIT_S = 1;

/**
 * The error every failing request rejects with.
 *
 * `kind` tells the cases apart:
 * - `"failed"`: the server gave a final non-2xx answer (the task failed: 422 by default; 404/410 for
 *   an unknown or expired request; other 4xx/5xx; 502/503/504 that outlasted the retries while
 *   polling; or a start's 429 push-back that outlasted the retries);
 * - `"timeout"`: the overall `timeout` passed (the request may still finish on the server);
 * - `"aborted"`: the caller's `signal` aborted (a started request is cancelled on the server too);
 * - `"network"`: `fetch` itself failed (on start, or on every retry while polling), or an answer's
 *   body could not be read;
 * - `"protocol"`: a 202 without id/token or without a JSON body.
 */
export class AsyncRequestError extends Error {
  /**
   * @param {"failed"|"timeout"|"aborted"|"network"|"protocol"} kind
   * @param {string} message
   * @param {{status?: number, body?: unknown, cause?: unknown}} [details]
   */
  constructor(kind, message, { status, body, cause } = {}) {
    super(message, { cause });
    this.name = "AsyncRequestError";
    /** @type {"failed"|"timeout"|"aborted"|"network"|"protocol"} */
    this.kind = kind;
    /** @type {number|undefined} HTTP status of the answer, when there was one. */
    this.status = status;
    /** @type {unknown} The answer's body (parsed JSON, else text), when there was one. */
    this.body = body;
    /** @type {unknown} The underlying error, if any. */
    this.cause = cause;
  }
}

/**
 * @typedef {object} AsyncRequestState  What is needed to poll an existing request (safe to JSON-encode).
 * @property {string} url
 * @property {string} method
 * @property {string} id     `async_request_id`
 * @property {string} token  `async_request_token` (a secret: keep it out of URLs and logs)
 * @property {Record<string,string>} [headers]  the caller's request headers
 * @property {string} [body]  the request body, when it is a string (re-sent with every poll)
 */

/**
 * @typedef {object} AsyncRequestOptions
 * @property {string} [method="GET"]
 * @property {HeadersInit} [headers]
 * @property {BodyInit|object|null} [body]  a plain object or array is sent as JSON
 * @property {number} [timeout=60000]  overall bound in ms (kind `"timeout"`); 0 or Infinity for none
 * @property {AbortSignal} [signal]  aborts the request (kind `"aborted"`); once the server has
 *   answered the start with an id and token, it also cancels the request on the server (see `cancelOnAbort`)
 * @property {boolean} [cancelOnAbort=true]  on `signal` abort, send `DELETE` with the id and token to
 *   the same URL (fire-and-forget, `keepalive`) so the server cancels the job; false only stops polling
 * @property {(p: {status: string, progress: object|null}) => void} [onProgress]  called on every 202
 * @property {(state: AsyncRequestState) => void} [onStart]  called once the first 202 arrives
 * @property {number} [wait=20]  seconds for `Prefer: wait=N`; 0 to send no Prefer header
 * @property {number} [retries=5]  consecutive transient failures tolerated while polling; also how many
 *   times a start refused with 429 (too many pending requests) is sent again, after its `Retry-After`
 * @property {string} [persistKey]  save the state under this key in `storage`; cleared when the request settles
 * @property {Storage} [storage=sessionStorage]
 * @property {RequestInit} [init]  extra fetch options (e.g. `credentials`) for every request
 * @property {number} [maxWaitingPolls=2]  waiting polls (and held starts) the page holds at once per
 *   origin, this request's counted with the others' ({@link MAX_WAITING_POLLS}); raise it only outside
 *   browsers, where nothing limits connections per origin
 * @property {boolean} [stream=true]  follow the request over the server's shared event stream when
 *   a 202 names one; false polls (within the per-origin budget of waiting polls)
 */

/**
 * @typedef {object} AsyncResult
 * @property {number} status   HTTP status of the final answer (200 unless the app set another 2xx)
 * @property {unknown} body    parsed JSON, or the text when it is not JSON
 * @property {Headers} headers the final answer's headers
 * @property {string|undefined} id  the `async_request_id` (undefined if the server answered at once)
 */

/**
 * Start an asynchronous request and poll it to its final answer.
 *
 * Resolves on a final 2xx (other than 202). Rejects with {@link AsyncRequestError}. A network error
 * on the start request is not retried (the server may have enqueued it); polls are retried, and so is a
 * start refused with 429 (too many pending requests: nothing was enqueued), after its `Retry-After`.
 * If `onStart` or `onProgress` throws, the request stops and rejects with that error.
 *
 * @param {string|URL} url
 * @param {AsyncRequestOptions} [options]
 * @returns {Promise<AsyncResult>}
 */
export async function asyncRequest(url, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  const headers = toObject(options.headers);
  let body = options.body;
  if (body !== null && typeof body === "object" && (Array.isArray(body) || Object.getPrototypeOf(body) === Object.prototype)) {
    body = JSON.stringify(body);
    if (!("content-type" in headers)) headers["content-type"] = "application/json";
  }
  return run({ url: String(url), method, headers, body }, options, false);
}

/**
 * Poll an existing request from a saved state (e.g. after a page reload). Polls at once.
 *
 * @param {AsyncRequestState} state  as given to `onStart`, or from {@link loadState}
 * @param {AsyncRequestOptions} [options]  `method`, `headers` and `body` come from `state`
 * @returns {Promise<AsyncResult>}
 */
export async function resumeAsyncRequest(state, options = {}) {
  if (!state || typeof state.id !== "string" || typeof state.token !== "string" || !state.url) {
    throw new TypeError("resumeAsyncRequest: state needs url, id and token");
  }
  const method = (state.method || "GET").toUpperCase();
  return run({ ...state, method, headers: toObject(state.headers) }, options, true);
}

/**
 * Save a request state (JSON) in a Storage. Never throws (full or disabled storage returns false).
 * @param {string} key
 * @param {AsyncRequestState} state
 * @param {Storage} [storage=globalThis.sessionStorage]
 * @returns {boolean} whether it was saved
 */
export function saveState(key, state, storage = globalThis.sessionStorage) {
  try {
    storage.setItem(key, JSON.stringify(state));
    return true;
  } catch {
    return false;
  }
}

/**
 * Load a state saved with {@link saveState}.
 * @param {string} key
 * @param {Storage} [storage=globalThis.sessionStorage]
 * @returns {AsyncRequestState|null} null when absent or unreadable
 */
export function loadState(key, storage = globalThis.sessionStorage) {
  try {
    const state = JSON.parse(storage.getItem(key));
    return state && typeof state.id === "string" && typeof state.token === "string" ? state : null;
  } catch {
    return null;
  }
}

/**
 * Remove a saved state. Never throws.
 * @param {string} key
 * @param {Storage} [storage=globalThis.sessionStorage]
 */
export function clearState(key, storage = globalThis.sessionStorage) {
  try {
    storage.removeItem(key);
  } catch {
    /* nothing saved, nothing to clear */
  }
}

/** Starts (unless resuming) and polls one request to its final answer. */
async function run(req, options, resuming) {
  if (options.signal && options.signal.aborted) throw abortedError(options.signal);
  return new Run(req, options).run(resuming);
}

/** One request, start to final answer: each method is one step of it. */
class Run {
  constructor(req, options) {
    this.req = req;
    this.options = options;
    /** @type {{timeout: number, wait: number, retries: number}} */
    this.o = {};
    for (const k of Object.keys(DEFAULTS)) this.o[k] = options[k] ?? DEFAULTS[k];
    this.storage = options.storage || globalThis.sessionStorage;
    this.persisted = false; // whether `persistKey` holds this request's state
    this.delays = 0; // backoff delays so far
    // The caller's signal and the overall timeout, combined: it aborts every fetch and sleep.
    this.timer = overallTimeout(this.o.timeout);
    this.signal = anySignal([options.signal, this.timer].filter(Boolean));
    // Settles only when stopped; raced against every await so a fetch that ignores its signal cannot hang us.
    this.stopped = new Promise((_, reject) => {
      this.onStop = () => reject(this.stopError());
      this.signal.addEventListener("abort", this.onStop, { once: true });
    });
    this.stopped.catch(() => {});
  }

  async run(resuming) {
    try {
      if (resuming) {
        this.persisted = Boolean(this.options.persistKey);
        return await this.pollUntilFinal(0);
      }
      const res = await this.start();
      if (res.status !== 202) return await this.final(res);
      return await this.pollUntilFinal(await this.accept(res));
    } catch (e) {
      if (!this.signal.aborted) throw e;
      const stop = this.stopError();
      if (stop.kind === "aborted") this.cancelOnServer();
      throw stop;
    } finally {
      this.signal.removeEventListener("abort", this.onStop);
      if (this.persisted) clearState(this.options.persistKey, this.storage);
    }
  }

  /**
   * The caller aborted: unless `cancelOnAbort` is false, asks the server to cancel the request
   * (`DELETE` on the same URL with the id and token headers) once it has an id. Fire-and-forget
   * with `keepalive`, so it goes out even when the page is being left; its answer (202, or 409 if
   * the request had just finished) does not matter here.
   */
  cancelOnServer() {
    const { req, options } = this;
    if (options.cancelOnAbort === false || !req.id || !req.token) return;
    const h = new Headers(req.headers);
    h.delete("content-type");
    if (!h.has("x-csrf-token")) {
      const csrf = csrfToken(req.url);
      if (csrf) h.set("X-CSRF-Token", csrf);
    }
    h.set("Async-Request-Id", req.id);
    h.set("Async-Request-Token", req.token);
    const init = { cache: "no-store", ...options.init, method: "DELETE", headers: h, keepalive: true };
    delete init.signal;
    try {
      Promise.resolve(fetch(req.url, init)).catch(() => {});
    } catch {
      // A fetch that throws synchronously: nothing more to do.
    }
  }

  /** `timeout` when the overall timeout fired first (its reason is the combined signal's), else `aborted`. */
  stopError() {
    if (this.timer && this.signal.reason === this.timer.reason) {
      return new AsyncRequestError("timeout", `async request timed out after ${this.o.timeout} ms`);
    }
    return abortedError(this.options.signal);
  }

  /** `p`, unless the request stops first. */
  step(p) {
    return Promise.race([p, this.stopped]);
  }

  /**
   * Sends the start; while the server pushes back (`START_RETRIED`), waits for its `Retry-After`
   * (clamped to the backoff cap; the backoff without one) and sends it again, at most `retries`
   * times. Resolves to the last answer: after the retries, a 429 is a final answer (kind `failed`).
   */
  async start() {
    // One key for this start, whatever is retried: a network error, a 502/503/504 or a 429.
    const key = new Headers(this.req.headers).has("idempotency-key") ? null : newIdempotencyKey();
    for (let refusals = 0; ; refusals++) {
      const res = await this.sendStart(key);
      if (!START_RETRIED.has(res.status) || refusals >= this.o.retries) return res;
      await this.step(res.text()).catch(() => {}); // drain it: frees the connection
      await this.sleep(this.hintedDelay(res) ?? this.backoff());
    }
  }

  /**
   * The start request, asking the server to hold it up to `START_WAIT_S` until the job finishes,
   * so a fast job costs one request; a server that does not hold it answers 202 at once. It carries
   * an `Idempotency-Key` (the caller's, or `key`, made once per start), so a network error or a 502/503/504 is
   * retried with the same key (up to `retries` times, honouring `Retry-After`): a start the server
   * did enqueue answers with that request, never a second one. Resolves to the first other answer,
   * or the last transient one.
   */
  async sendStart(key) {
    const extra = this.waitHeader(Math.min(this.o.wait, START_WAIT_S));
    if (key) extra["Idempotency-Key"] = key;
    for (let failures = 0; ; ) {
      let res;
      try {
        res = await this.send(extra);
      } catch (e) {
        if (this.signal.aborted) throw e;
        if (++failures > this.o.retries) {
          throw new AsyncRequestError("network", "async request could not be sent", { cause: e });
        }
        await this.sleep(this.backoff());
        continue;
      }
      if (!TRANSIENT.has(res.status) || ++failures > this.o.retries) return res;
      try {
        await this.step(res.text()); // drain it: frees the connection
      } catch (e) {
        if (this.signal.aborted) throw e;
      }
      await this.sleep(this.hintedDelay(res) ?? this.backoff());
    }
  }

  /** The start's 202: takes the id and token, tells the caller; resolves to the delay before the first poll. */
  async accept(res) {
    const data = await this.accepted(res);
    const { async_request_id: id, async_request_token: token } = data;
    if (typeof id !== "string" || !id || typeof token !== "string" || !token) {
      throw new AsyncRequestError("protocol", "202 answer without async_request_id/async_request_token", { status: 202, body: data });
    }
    this.started(id, token);
    this.noteStream(res);
    this.progress(data);
    // With waiting polls on, the first poll goes out at once: a server that holds it answers
    // the moment the job finishes; one that does not answers at once with its Retry-After.
    return this.o.wait > 0 ? 0 : this.hintedDelay(res) ?? this.backoff();
  }

  /** Keeps id and token for the polls; saves the state under `persistKey`; calls `onStart`. */
  started(id, token) {
    const { req, options } = this;
    Object.assign(req, { id, token });
    const state = { url: req.url, method: req.method, id, token, headers: { ...req.headers } };
    if (typeof req.body === "string") state.body = req.body;
    if (options.persistKey) this.persisted = saveState(options.persistKey, state, this.storage);
    if (options.onStart) options.onStart(state);
  }

  /** Polls after `delay` until the final answer; gives up after `retries` consecutive transient failures. */
  async pollUntilFinal(delay) {
    for (let failures = 0; ; ) {
      // Over the page's shared stream while there is one: its `finished` calls for one poll now.
      if (this.streamUrl && (await this.viaStream())) delay = 0;
      await this.sleep(delay);
      const next = await this.poll();
      if (next.result) return next.result;
      failures = next.failure ? failures + 1 : 0;
      if (failures > this.o.retries) throw next.failure(failures);
      delay = next.delay;
    }
  }

  /**
   * One poll: `{result}` on the final answer; `{delay}` on a 202; `{delay, failure}` on a network
   * error or a 502/503/504, where `failure(n)` is the error to give up with after n of them.
   */
  async poll() {
    let res, text;
    try {
      res = await this.send(this.pollHeaders());
      if (TRANSIENT.has(res.status)) text = await this.step(res.text()); // drain it: frees the connection
    } catch (e) {
      if (this.signal.aborted) throw e;
      const failure = (n) => new AsyncRequestError("network", `async request poll failed ${n} times`, { cause: e });
      return { failure, delay: this.backoff() };
    }
    if (text !== undefined) {
      return { failure: () => failed(res.status, parseBody(text)), delay: this.hintedDelay(res) ?? this.backoff() };
    }
    if (res.status !== 202) return { result: await this.final(res) };
    const data = await this.accepted(res);
    if (data.async_request_id !== undefined && data.async_request_id !== this.req.id) {
      throw new AsyncRequestError("protocol", "202 answer for another async_request_id", { status: 202, body: data });
    }
    this.noteStream(res);
    this.progress(data);
    const held = /\bwait\b/i.test(res.headers.get("preference-applied") || "");
    return { delay: held ? 0 : this.hintedDelay(res) ?? this.backoff() };
  }

  /**
   * Follows this request over the page's shared event stream until it `finished` (or the stream
   * does not know it): true then, for one poll to fetch the answer; false when there is no usable
   * stream (the caller polls).
   */
  async viaStream() {
    const hub = streamHub(this.streamUrl, this.options.init);
    if (!hub) return false;
    const { id, token } = this.req;
    try {
      await this.step(hub.follow(id, token, (data) => this.progress(data)));
      return true;
    } catch (e) {
      if (e instanceof StreamUnavailable) {
        this.streamUrl = null;
        return false;
      }
      throw e;
    } finally {
      hub.unfollow(id);
    }
  }

  /** Notes the event stream a 202 names (`Link`), unless streams are off. */
  noteStream(res) {
    if (this.options.stream === false || this.streamUrl === null) return;
    const url = streamLink(res.headers.get("link"), this.req.url);
    if (url) this.streamUrl = url;
  }

  pollHeaders() {
    return { "Async-Request-Id": this.req.id, "Async-Request-Token": this.req.token, ...this.waitHeader(this.o.wait) };
  }

  /** `Prefer: wait=N` for `seconds` (whole, at least 1) when waiting is on; none for 0. */
  waitHeader(seconds) {
    return seconds > 0 ? { Prefer: `wait=${Math.max(1, Math.floor(seconds))}` } : {};
  }

  /** Sends the request (start or poll) with `extra` headers; the page's CSRF token for non-GET requests. */
  send(extra) {
    const { req } = this;
    const h = new Headers(req.headers);
    if (req.method !== "GET" && req.method !== "HEAD" && !h.has("x-csrf-token")) {
      const csrf = csrfToken(req.url);
      if (csrf) h.set("X-CSRF-Token", csrf);
    }
    // A waiting poll only while the origin has a free slot; else a short poll (Retry-After).
    const slot = "Prefer" in extra ? waitingSlot(req.url, this.options.maxWaitingPolls ?? MAX_WAITING_POLLS) : null;
    for (const [k, v] of Object.entries(extra)) if (k !== "Prefer" || slot) h.set(k, v);
    const init = { cache: "no-store", ...this.options.init, method: req.method, headers: h, signal: this.signal };
    if (req.body != null) init.body = req.body;
    const sent = Promise.resolve().then(() => fetch(req.url, init));
    // The slot is free once the answer's head arrived (a held poll answers when it is released).
    if (slot) sent.then(slot, slot);
    return this.step(sent);
  }

  /** Resolves after `ms`, or rejects as soon as the request stops. */
  sleep(ms) {
    const { signal } = this;
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(this.stopError());
      if (ms <= 0) return resolve();
      const onAbort = () => (clearTimeout(t), reject(this.stopError()));
      const t = setTimeout(() => (signal.removeEventListener("abort", onAbort), resolve()), ms);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** The answer's body (JSON, else text); kind `network` when it cannot be read. */
  async read(res) {
    try {
      return parseBody(await this.step(res.text()));
    } catch (e) {
      if (this.signal.aborted) throw e;
      throw new AsyncRequestError("network", "async request answer could not be read", { status: res.status, cause: e });
    }
  }

  /** A final answer: the result on 2xx, else kind `failed`. */
  async final(res) {
    const body = await this.read(res);
    if (res.status >= 200 && res.status < 300) return { status: res.status, body, headers: res.headers, id: this.req.id };
    throw failed(res.status, body);
  }

  /** A 202's body, which must be a JSON object. */
  async accepted(res) {
    const body = await this.read(res);
    if (!body || typeof body !== "object") {
      throw new AsyncRequestError("protocol", "202 answer without a JSON object body", { status: 202, body });
    }
    return body;
  }

  progress(data) {
    const { onProgress } = this.options;
    if (onProgress) onProgress({ status: data.status, progress: data.progress === undefined ? null : data.progress });
  }

  /** The answer's `Retry-After` clamped to [0, the backoff cap]; null when it has none. */
  hintedDelay(res) {
    const ms = retryAfter(res.headers.get("retry-after"));
    return ms == null ? null : Math.min(Math.max(ms, 0), BACKOFF.max);
  }

  /** The next backoff delay: grows by `factor` to the cap, reduced by a random fraction up to `jitter`. */
  backoff() {
    const base = Math.min(BACKOFF.max, BACKOFF.min * Math.pow(BACKOFF.factor, this.delays++));
    return Math.round(base * (1 - BACKOFF.jitter * Math.random()));
  }
}

/** Waiting polls held per origin now (see {@link MAX_WAITING_POLLS}). */
const waitingPolls = new Map();

/**
 * Takes one of the origin's waiting-poll slots: a function that frees it (once), or null when the
 * origin holds `limit` ({@link MAX_WAITING_POLLS} by default) already.
 */
function waitingSlot(url, limit) {
  const origin = originOf(url);
  const held = waitingPolls.get(origin) || 0;
  if (held >= limit) return null;
  waitingPolls.set(origin, held + 1);
  let freed = false;
  return () => {
    if (freed) return;
    freed = true;
    const now = (waitingPolls.get(origin) || 1) - 1;
    if (now > 0) waitingPolls.set(origin, now);
    else waitingPolls.delete(origin);
  };
}

/** The page's base URL, when there is a page. */
function baseUrl() {
  const loc = globalThis.location;
  return loc && loc.href ? loc.href : undefined;
}

/** The origin of `url` (relative to the page); the URL itself when it cannot be resolved. */
function originOf(url) {
  try {
    return new URL(url, baseUrl()).origin;
  } catch {
    return String(url);
  }
}

/**
 * The event stream a `Link` header names (`<url>; rel="async-endpoint-stream"`), resolved against
 * the request's URL; null when there is none.
 * @param {string|null} header
 * @param {string} requestUrl
 * @returns {string|null}
 */
export function streamLink(header, requestUrl) {
  if (!header) return null;
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (!m) continue;
    const rels = /;\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))/i.exec(m[2]);
    const rel = rels && (rels[1] ?? rels[2]);
    if (!rel || !rel.split(/\s+/).includes(STREAM_REL)) continue;
    try {
      return new URL(m[1], new URL(requestUrl, baseUrl())).href;
    } catch {
      return null;
    }
  }
  return null;
}

/**
 * A parser of `text/event-stream` text (the WHATWG server-sent events format): `push(chunk)`
 * returns the events completed by that chunk, each `{event, data, retry}` (`event` defaults to
 * `"message"`; comments are skipped; `retry` is set on the event after a `retry:` line).
 *
 * ```js
 * const parser = eventStreamParser();
 * parser.push("event: state\ndata: {\"a\":1}\n\n"); // [{event: "state", data: "{\"a\":1}", retry: undefined}]
 * ```
 * @returns {{push(chunk: string): Array<{event: string, data: string, retry: number|undefined}>}}
 */
export function eventStreamParser() {
  let buffer = "";
  let event = "";
  let data = [];
  let retry;
  return {
    push(chunk) {
      buffer += chunk;
      const out = [];
      // A line ends at CRLF, LF or CR; a lone CR at the very end may be half of a CRLF.
      for (;;) {
        const m = /\r\n|\n|\r(?!$)/.exec(buffer);
        if (!m) break;
        const line = buffer.slice(0, m.index);
        buffer = buffer.slice(m.index + m[0].length);
        if (line === "") {
          if (data.length) out.push({ event: event || "message", data: data.join("\n"), retry });
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
      }
      return out;
    },
  };
}

/** A stream that cannot be used (refused, or failed too often): its requests poll instead. */
class StreamUnavailable extends Error {
  constructor() {
    super("async-endpoint event stream unavailable");
    this.name = "StreamUnavailable";
  }
}

/** The page's one stream per stream URL. */
const hubs = new Map();

/** The hub of the stream at `url` (made on first use); null while that stream is paused. */
function streamHub(url, init) {
  let hub = hubs.get(url);
  if (!hub) hubs.set(url, (hub = new StreamHub(url, init)));
  return Date.now() < hub.pausedUntil ? null : hub;
}

/**
 * One event stream for every request of the page that it serves: re-opened with the whole set
 * when a request joins (gathering a burst of starts first), and when the connection drops or the
 * server ends it; `finished` and `not_found` settle a request's `follow`. After
 * {@link STREAM_ATTEMPTS} failed attempts in a row (or one refusal: the server has no stream) every
 * follower rejects with {@link StreamUnavailable} and polls, and the stream rests a while.
 */
class StreamHub {
  constructor(url, init) {
    this.url = url;
    this.init = init || {};
    /** id -> {token, onState, resolve, reject} */
    this.followers = new Map();
    this.connection = null; // the open attempt's AbortController
    this.timer = null;
    this.failures = 0;
    this.retryMs = 1000;
    this.pausedUntil = 0;
  }

  /** Resolves with `"finished"` or `"not_found"`; rejects with StreamUnavailable (or onState's error). */
  follow(id, token, onState) {
    if (this.followers.size >= STREAM_MAX_REQUESTS) return Promise.reject(new StreamUnavailable());
    return new Promise((resolve, reject) => {
      this.followers.set(id, { token, onState, resolve, reject });
      this.reopen(STREAM_GATHER_MS);
    });
  }

  /** Stops following `id`; closes the stream when nobody is left (no re-open for a removal). */
  unfollow(id) {
    this.followers.delete(id);
    if (this.followers.size === 0) this.close();
  }

  close() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.connection) this.connection.abort();
    this.connection = null;
  }

  /** (Re-)opens the stream with every follower after `ms` (a pending re-open is kept). */
  reopen(ms) {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.connection) this.connection.abort();
      this.connection = null;
      if (this.followers.size) this.connect();
    }, ms);
  }

  async connect() {
    const ctl = new AbortController();
    this.connection = ctl;
    const requests = [...this.followers].map(([id, f]) => ({ async_request_id: id, async_request_token: f.token }));
    const headers = new Headers({ "content-type": "application/json", accept: "text/event-stream" });
    const csrf = csrfToken(this.url);
    if (csrf) headers.set("X-CSRF-Token", csrf);
    const init = { cache: "no-store", credentials: this.init.credentials, method: "POST", headers, body: JSON.stringify({ requests }), signal: ctl.signal };
    if (!init.credentials) delete init.credentials;
    let reconnect = false;
    try {
      const res = await fetch(this.url, init);
      if (res.status !== 200 || !/^text\/event-stream/i.test(res.headers.get("content-type") || "")) {
        if (ctl.signal.aborted) return;
        this.connection = null;
        res.text().catch(() => {});
        // The server answered, but with no stream (none offered, or refused): do not insist.
        return this.giveUp(STREAM_PAUSE_MS);
      }
      this.failures = 0;
      const parser = eventStreamParser();
      const decoder = new TextDecoder();
      const reader = res.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const ev of parser.push(decoder.decode(value, { stream: true }))) {
          if (ev.retry !== undefined) this.retryMs = ev.retry;
          if (ev.event === "reconnect") reconnect = true;
          else this.dispatch(ev);
        }
      }
    } catch {
      if (ctl.signal.aborted) return;
    }
    if (this.connection !== ctl) return;
    this.connection = null;
    if (this.followers.size === 0) return;
    // Ended by the server (its lifetime): again at once; cut: again after `retry`, a few times.
    if (reconnect) return this.reopen(0);
    if (++this.failures >= STREAM_ATTEMPTS) return this.giveUp(STREAM_PAUSE_MS);
    this.reopen(this.retryMs * this.failures);
  }

  /** One event: a state for its follower, or the end of following it. */
  dispatch(ev) {
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      return;
    }
    const follower = data && this.followers.get(data.async_request_id);
    if (!follower) return;
    if (ev.event === "state") {
      try {
        follower.onState({ status: data.status, progress: data.progress });
      } catch (e) {
        this.followers.delete(data.async_request_id);
        follower.reject(e);
      }
    } else if (ev.event === "finished" || ev.event === "not_found") {
      this.followers.delete(data.async_request_id);
      follower.resolve(ev.event);
    }
  }

  /** Every follower polls instead; the stream rests for `ms`. */
  giveUp(ms) {
    this.pausedUntil = Date.now() + ms;
    this.failures = 0;
    const followers = [...this.followers.values()];
    this.followers.clear();
    this.close();
    for (const f of followers) f.reject(new StreamUnavailable());
  }
}

/**
 * A fresh `Idempotency-Key`: a random (v4) UUID, from `crypto.randomUUID()` where there is one
 * (secure contexts), else from `crypto.getRandomValues()` (plain-HTTP pages of some browsers).
 */
export function newIdempotencyKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < b.length; i++) b[i] = Math.floor(Math.random() * 256); // no Web Crypto at all
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // variant 10
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function abortedError(signal) {
  return new AsyncRequestError("aborted", "async request aborted", { cause: signal && signal.reason });
}

function failed(status, body) {
  return new AsyncRequestError("failed", failMessage(status, body), { status, body });
}

/** The overall timeout as an `AbortSignal.timeout` (whole ms, at most a timer's range); null for none. */
function overallTimeout(ms) {
  return ms > 0 && ms < Infinity ? timeoutSignal(Math.min(Math.ceil(ms), MAX_TIMER_MS)) : null;
}

/**
 * `AbortSignal.any(signals)`, built by hand where the platform lacks it (Safari before 17.4,
 * Node before 18.17): aborts with the reason of the first signal that aborts.
 */
function anySignal(signals) {
  if (typeof AbortSignal.any === "function") return AbortSignal.any(signals);
  const ctl = new AbortController();
  for (const s of signals) {
    if (s.aborted) {
      ctl.abort(s.reason);
      break;
    }
    s.addEventListener("abort", () => ctl.abort(s.reason), { once: true });
  }
  return ctl.signal;
}

/** `AbortSignal.timeout(ms)`, built by hand where the platform lacks it (Safari before 16). */
function timeoutSignal(ms) {
  if (typeof AbortSignal.timeout === "function") return AbortSignal.timeout(ms);
  const ctl = new AbortController();
  setTimeout(() => ctl.abort(new DOMException("signal timed out", "TimeoutError")), ms);
  return ctl.signal;
}

function toObject(h) {
  return h ? Object.fromEntries(new Headers(h)) : {};
}

function parseBody(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** `Retry-After` as ms from now: delta-seconds or an HTTP-date; null when absent or unparsable. */
function retryAfter(value) {
  if (value == null) return null;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v) * 1000; // fractions are lenient, not RFC 9110
  if (!/^[a-z]{3}, /i.test(v)) return null; // an HTTP-date starts with the day name
  const t = Date.parse(v);
  return Number.isNaN(t) ? null : t - Date.now();
}

function failMessage(status, body) {
  const detail = body && typeof body === "object" ? body.detail || body.title || body.error || body.message : null;
  return `async request failed with HTTP ${status}${typeof detail === "string" ? `: ${detail}` : ""}`;
}

/** The page's `<meta name="csrf-token">`, only for same-origin URLs (the token must not leak). */
function csrfToken(url) {
  const doc = globalThis.document;
  if (!doc || typeof doc.querySelector !== "function") return null;
  const loc = globalThis.location;
  try {
    if (loc && new URL(url, loc.href).origin !== loc.origin) return null;
  } catch {
    return null;
  }
  const meta = doc.querySelector('meta[name="csrf-token"]');
  return (meta && meta.getAttribute("content")) || null;
}

/**
 * What jQuery `error`/`fail` callbacks receive: the parsed failure body when the server sent a JSON
 * object, else `{error: kind, kind, status, message}`. Either way it also carries what jQuery's
 * jqXHR would, as non-enumerable properties (so the body's own fields are unchanged): `status`
 * (the HTTP status, 0 without an answer; a body's own `status` field is kept), `responseJSON` (the
 * parsed body, if JSON) and `responseText` (the body as text), as code written against the gem's
 * `$.getAsyncEndpoint` expects.
 * @param {AsyncRequestError|Error} e
 * @returns {object}
 */
export function errorPayload(e) {
  const body = e ? e.body : undefined;
  let payload;
  if (e && e.kind === "failed" && body && typeof body === "object") {
    payload = Array.isArray(body) ? { ...body } : { ...body };
  } else {
    const kind = (e && e.kind) || "failed";
    payload = { error: kind, kind, status: e && e.status, message: (e && e.message) || String(e) };
  }
  const hidden = (value) => ({ value, enumerable: false, writable: true, configurable: true });
  const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
  Object.defineProperty(payload, "responseText", hidden(text));
  if (body !== undefined && typeof body !== "string") Object.defineProperty(payload, "responseJSON", hidden(body));
  if (!("status" in payload)) Object.defineProperty(payload, "status", hidden((e && e.status) || 0));
  else if (payload.status === undefined) payload.status = 0;
  return payload;
}

/**
 * Register `$.getAsyncRequest(url, timeoutMs, options)` (also as `$.getAsyncEndpoint`, the name the
 * original gem's JS shipped) on a jQuery (called automatically at load
 * when `globalThis.jQuery` exists). It returns a jQuery promise with `.done/.fail/.always/.then`
 * plus the original chainable `.success(fn)` (gets the final body) and `.error(fn)` (gets
 * {@link errorPayload}), and `.abort()`, which stops it like a jqXHR's and cancels the request on
 * the server (as the `signal` option does). `done`/`success` callbacks also get the full result as second argument,
 * `fail`/`error` the {@link AsyncRequestError}.
 *
 * ```js
 * $.getAsyncRequest(url, 10000).success(function (r) { … }).error(function (r) { … });
 * ```
 *
 * @param {any} $  jQuery (anything with `Deferred()`)
 * @returns {any} `$`
 */
export function installJQuery($) {
  $.getAsyncEndpoint = $.getAsyncRequest = function getAsyncRequest(url, timeout, options) {
    const deferred = $.Deferred();
    const opts = { ...options };
    if (timeout != null) opts.timeout = timeout;
    // `promise.abort()`, like a jqXHR's: stops polling and cancels the request on the server.
    const controller = new AbortController();
    opts.signal = opts.signal ? anySignal([opts.signal, controller.signal]) : controller.signal;
    // Progress also reaches jQuery's own `.progress(fn)`.
    const userProgress = opts.onProgress;
    opts.onProgress = (update) => {
      if (userProgress) userProgress(update);
      deferred.notify(update);
    };
    // Blocks, not expressions: returning the (thenable) Deferred would make the native promise
    // adopt its rejection and report it as unhandled.
    asyncRequest(url, opts).then(
      (result) => {
        deferred.resolve(result.body, result);
      },
      (e) => {
        deferred.reject(errorPayload(e), e);
      },
    );
    const promise = deferred.promise();
    promise.success = function success() {
      promise.done.apply(promise, arguments);
      return promise;
    };
    promise.error = function error() {
      promise.fail.apply(promise, arguments);
      return promise;
    };
    promise.abort = function abort(reason) {
      controller.abort(reason);
      return promise;
    };
    return promise;
  };
  return $;
}

if (globalThis.jQuery && typeof globalThis.jQuery.Deferred === "function") installJQuery(globalThis.jQuery);
