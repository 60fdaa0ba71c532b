/**
 * async-endpoint JS client: asynchronous request-reply over `fetch`, with no dependencies.
 *
 * Start a request, get `202 Accepted` with an id and a token, poll until the final answer arrives.
 * Uses waiting polls (`Prefer: wait=N`) when the server honours them, honours `Retry-After`
 * otherwise, and backs off with jitter to a cap when neither is there. The id and token travel
 * in headers (`Async-Request-Id`, `Async-Request-Token`), never in the URL.
 *
 * ```js
 * import { asyncRequest } from "/async_endpoint.js";
 * const { body } = await asyncRequest("/my_endpoint", { onProgress: ({ progress }) => show(progress) });
 * ```
 *
 * When `globalThis.jQuery` is present at load time it also gets `$.getAsyncRequest(url, timeoutMs)`
 * (see {@link installJQuery}).
 *
 * @module async-endpoint
 */

/**
 * Documented defaults. `timeout` and delays in milliseconds, `wait` in seconds.
 * @type {Readonly<{timeout: number, wait: number, minDelay: number, maxDelay: number, factor: number, jitter: number, retries: number}>}
 */
export const DEFAULTS = Object.freeze({
  timeout: 60000, // overall bound for the whole request, start to final answer
  wait: 20, // seconds asked for with `Prefer: wait=N`; 0 sends no Prefer header
  minDelay: 250, // first backoff delay
  maxDelay: 5000, // backoff cap, and the upper clamp for Retry-After
  factor: 1.5, // backoff growth per delay
  jitter: 0.25, // each backoff delay is reduced by a random 0..25 %
  retries: 5, // consecutive 502/503/504 or network errors tolerated while polling
});

const TRANSIENT = new Set([502, 503, 504]);

/**
 * The error every failing request rejects with.
 *
 * `kind` tells the cases apart:
 * - `"failed"`: the server gave a final non-2xx answer (the task failed: 422 by default; 404/410 for
 *   an unknown or expired request; other 4xx/5xx; or 502/503/504 that outlasted the retries);
 * - `"timeout"`: the overall `timeout` passed (the request may still finish on the server);
 * - `"aborted"`: the caller's `signal` aborted;
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
 * @property {number} [timeout=60000]  overall bound in ms; 0 or Infinity for none
 * @property {AbortSignal} [signal]  aborts the request (kind `"aborted"`)
 * @property {(p: {status: string, progress: object|null}) => void} [onProgress]  called on every 202
 * @property {(state: AsyncRequestState) => void} [onStart]  called once the first 202 arrives
 * @property {number} [wait=20]  seconds for `Prefer: wait=N`; 0 to send no Prefer header
 * @property {number} [retries=5]  consecutive transient failures tolerated while polling
 * @property {number} [minDelay=250]  first backoff delay in ms
 * @property {number} [maxDelay=5000]  backoff cap in ms; also clamps `Retry-After`
 * @property {number} [factor=1.5]  backoff growth per delay
 * @property {number} [jitter=0.25]  each backoff delay is reduced by up to this fraction
 * @property {string} [persistKey]  save the state under this key in `storage`; cleared when the request settles
 * @property {Storage} [storage=sessionStorage]
 * @property {RequestInit} [init]  extra fetch options (e.g. `credentials`) for every request
 * @property {typeof fetch} [fetch]  injectable for tests; default the global `fetch`
 * @property {(fn: () => void, ms: number) => any} [setTimeout]  default the global one
 * @property {(id: any) => void} [clearTimeout]  default the global one
 * @property {() => number} [random]  in [0, 1); default `Math.random`
 * @property {() => number} [now]  epoch ms; default `Date.now` (used for HTTP-date Retry-After)
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
 * on the start request is not retried (the server may have enqueued it); polls are retried.
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

async function run(req, options, resuming) {
  const o = { ...options };
  for (const k of Object.keys(DEFAULTS)) o[k] = options[k] ?? DEFAULTS[k];
  const doFetch = options.fetch || ((u, i) => globalThis.fetch(u, i));
  const setT = options.setTimeout || ((f, ms) => globalThis.setTimeout(f, ms));
  const clearT = options.clearTimeout || ((t) => globalThis.clearTimeout(t));
  const random = options.random || Math.random;
  const now = options.now || Date.now;
  const storage = options.storage || globalThis.sessionStorage;

  let why = null; // "timeout" | "aborted" once stopped
  const ctl = new AbortController();
  const sig = ctl.signal;
  const stopError = () =>
    why === "timeout"
      ? new AsyncRequestError("timeout", `async request timed out after ${o.timeout} ms`)
      : new AsyncRequestError("aborted", "async request aborted", { cause: options.signal && options.signal.reason });
  const stop = (kind) => {
    if (!why) (why = kind), ctl.abort();
  };
  // Settles only when stopped; raced against every await so a fetch that ignores its signal cannot hang us.
  const stopped = new Promise((_, reject) => sig.addEventListener("abort", () => reject(stopError()), { once: true }));
  stopped.catch(() => {});
  const step = (p) => Promise.race([p, stopped]);
  const sleep = (ms) =>
    new Promise((resolve, reject) => {
      if (sig.aborted) return reject(stopError());
      if (ms <= 0) return resolve();
      const onAbort = () => (clearT(t), reject(stopError()));
      const t = setT(() => (sig.removeEventListener("abort", onAbort), resolve()), ms);
      sig.addEventListener("abort", onAbort, { once: true });
    });

  if (options.signal && options.signal.aborted) {
    why = "aborted";
    throw stopError();
  }
  const onUserAbort = () => stop("aborted");
  if (options.signal) options.signal.addEventListener("abort", onUserAbort, { once: true });
  const timer = o.timeout > 0 && o.timeout < Infinity ? setT(() => stop("timeout"), Math.min(o.timeout, 2147483647)) : null;

  const send = (extra) => {
    const h = new Headers(req.headers);
    if (req.method !== "GET" && req.method !== "HEAD" && !h.has("x-csrf-token")) {
      const csrf = csrfToken(req.url);
      if (csrf) h.set("X-CSRF-Token", csrf);
    }
    for (const [k, v] of Object.entries(extra)) h.set(k, v);
    const init = { cache: "no-store", ...options.init, method: req.method, headers: h, signal: sig };
    if (req.body != null) init.body = req.body;
    return step(doFetch(req.url, init));
  };
  const read = async (res) => {
    try {
      return parseBody(await step(res.text()));
    } catch (e) {
      if (why) throw e;
      throw new AsyncRequestError("network", "async request answer could not be read", { status: res.status, cause: e });
    }
  };
  const failed = (status, body) => new AsyncRequestError("failed", failMessage(status, body), { status, body });
  const delayOf = (res) => {
    const ra = retryAfter(res.headers.get("retry-after"), now);
    return ra == null ? null : Math.min(Math.max(ra, 0), o.maxDelay);
  };
  let n = 0;
  const backoff = () => {
    const base = Math.min(o.maxDelay, o.minDelay * Math.pow(o.factor, n++));
    return Math.round(base * (1 - o.jitter * random()));
  };
  const progress = (data) =>
    o.onProgress && o.onProgress({ status: data.status, progress: data.progress === undefined ? null : data.progress });
  const final = async (res) => {
    const body = await read(res);
    if (res.status >= 200 && res.status < 300) return { status: res.status, body, headers: res.headers, id: req.id };
    throw failed(res.status, body);
  };
  const accepted = async (res) => {
    const body = await read(res);
    if (!body || typeof body !== "object") {
      throw new AsyncRequestError("protocol", "202 answer without a JSON object body", { status: 202, body });
    }
    return body;
  };

  let persisted = false;
  try {
    let delay = 0;
    if (!resuming) {
      let res;
      try {
        res = await send({});
      } catch (e) {
        if (why) throw e;
        throw new AsyncRequestError("network", "async request could not be sent", { cause: e });
      }
      if (res.status !== 202) return await final(res);
      const data = await accepted(res);
      const { async_request_id: id, async_request_token: token } = data;
      if (typeof id !== "string" || !id || typeof token !== "string" || !token) {
        throw new AsyncRequestError("protocol", "202 answer without async_request_id/async_request_token", { status: 202, body: data });
      }
      Object.assign(req, { id, token });
      const state = { url: req.url, method: req.method, id, token, headers: { ...req.headers } };
      if (typeof req.body === "string") state.body = req.body;
      if (o.persistKey) persisted = saveState(o.persistKey, state, storage);
      if (o.onStart) o.onStart(state);
      progress(data);
      // With waiting polls on, the first poll goes out at once: a server that holds it answers
      // the moment the job finishes; one that does not answers at once with its Retry-After.
      delay = o.wait > 0 ? 0 : delayOf(res) ?? backoff();
    } else if (o.persistKey) {
      persisted = true;
    }

    let failures = 0; // consecutive transient failures
    for (;;) {
      await sleep(delay);
      const extra = { "Async-Request-Id": req.id, "Async-Request-Token": req.token };
      if (o.wait > 0) extra.Prefer = `wait=${Math.floor(o.wait)}`;
      let res, text;
      try {
        res = await send(extra);
        if (TRANSIENT.has(res.status)) text = await step(res.text()); // drain it: frees the connection
      } catch (e) {
        if (why) throw e;
        if (++failures > o.retries) {
          throw new AsyncRequestError("network", `async request poll failed ${failures} times`, { cause: e });
        }
        delay = backoff();
        continue;
      }
      if (text !== undefined) {
        if (++failures > o.retries) throw failed(res.status, parseBody(text));
        delay = delayOf(res) ?? backoff();
        continue;
      }
      if (res.status !== 202) return await final(res);
      failures = 0;
      const data = await accepted(res);
      if (data.async_request_id !== undefined && data.async_request_id !== req.id) {
        throw new AsyncRequestError("protocol", "202 answer for another async_request_id", { status: 202, body: data });
      }
      progress(data);
      const held = /\bwait\b/i.test(res.headers.get("preference-applied") || "");
      delay = held ? 0 : delayOf(res) ?? backoff();
    }
  } catch (e) {
    throw why ? stopError() : e;
  } finally {
    if (timer !== null) clearT(timer);
    if (options.signal) options.signal.removeEventListener("abort", onUserAbort);
    if (persisted) clearState(o.persistKey, storage);
  }
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
function retryAfter(value, now) {
  if (value == null) return null;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v) * 1000; // fractions are lenient, not RFC 9110
  if (!/^[a-z]{3}, /i.test(v)) return null; // an HTTP-date starts with the day name
  const t = Date.parse(v);
  return Number.isNaN(t) ? null : t - now();
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
 * object, else `{error: kind, kind, status, message}`.
 * @param {AsyncRequestError|Error} e
 * @returns {object}
 */
export function errorPayload(e) {
  if (e && e.kind === "failed" && e.body && typeof e.body === "object") return e.body;
  const kind = (e && e.kind) || "failed";
  return { error: kind, kind, status: e && e.status, message: (e && e.message) || String(e) };
}

/**
 * Register `$.getAsyncRequest(url, timeoutMs, options)` on a jQuery (called automatically at load
 * when `globalThis.jQuery` exists). It returns a jQuery promise with `.done/.fail/.always/.then`
 * plus the original chainable `.success(fn)` (gets the final body) and `.error(fn)` (gets
 * {@link errorPayload}). `done`/`success` callbacks also get the full result as second argument,
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
  $.getAsyncRequest = function getAsyncRequest(url, timeout, options) {
    const deferred = $.Deferred();
    const opts = { ...options };
    if (timeout != null) opts.timeout = timeout;
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
    return promise;
  };
  return $;
}

if (globalThis.jQuery && typeof globalThis.jQuery.Deferred === "function") installJQuery(globalThis.jQuery);
