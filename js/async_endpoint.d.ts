/**
 * TypeScript declarations of the async-endpoint JS client (`async_endpoint.js`): the ES module
 * and the jQuery plugin it registers (`$.getAsyncRequest`). Checked by `npm run typecheck`
 * (`tsc --noEmit` over `types-test/`).
 *
 * @module async-endpoint
 */

/** Defaults of the options: `timeout` in milliseconds, `wait` in seconds. */
export declare const DEFAULTS: Readonly<{ timeout: number; wait: number; retries: number }>;

/** Waiting polls (and held starts) one origin gets at once (2); the rest short-poll. */
export declare const MAX_WAITING_POLLS: number;

/** What a failing request is: see {@link AsyncRequestError.kind}. */
export type AsyncRequestErrorKind = "failed" | "timeout" | "aborted" | "network" | "protocol";

/**
 * The error every failing request rejects with. `kind`: `"failed"` (a final non-2xx answer: the
 * task failed, 422 by default; 404/410; push-back or transient errors that outlasted the
 * retries), `"timeout"` (the overall `timeout` passed), `"aborted"` (the caller's `signal`),
 * `"network"` (`fetch` failed), `"protocol"` (a 202 without id/token or JSON body).
 */
export declare class AsyncRequestError extends Error {
  constructor(
    kind: AsyncRequestErrorKind,
    message: string,
    details?: { status?: number; body?: unknown; cause?: unknown },
  );
  readonly name: "AsyncRequestError";
  kind: AsyncRequestErrorKind;
  /** HTTP status of the answer, when there was one. */
  status: number | undefined;
  /** The answer's body (parsed JSON, else text), when there was one. */
  body: unknown;
  /** The underlying error, if any. */
  cause: unknown;
}

/** What is needed to poll an existing request (safe to JSON-encode). */
export interface AsyncRequestState {
  url: string;
  method: string;
  /** `async_request_id` */
  id: string;
  /** `async_request_token` (a secret: keep it out of URLs and logs) */
  token: string;
  /** The caller's request headers. */
  headers?: Record<string, string>;
  /** The request body, when it is a string (re-sent with every poll). */
  body?: string;
}

/** A request's progress as the server reports it (`TaskContext::progress`). */
export interface AsyncProgress {
  at: number;
  total: number | null;
  /** `at / total` in whole percent, when there is a total. */
  percent: number | null;
  message: string;
}

/** What `onProgress` gets on every 202. */
export interface AsyncProgressUpdate {
  /** `"queued"`, `"running"`, … */
  status: string;
  progress: AsyncProgress | null;
}

export interface AsyncRequestOptions {
  /** Default `"GET"`. */
  method?: string;
  headers?: HeadersInit;
  /** A plain object or array is sent as JSON. */
  body?: BodyInit | Record<string, unknown> | unknown[] | null;
  /** Overall bound in ms (kind `"timeout"`), default 60000; 0 or Infinity for none. */
  timeout?: number;
  /** Aborts the request (kind `"aborted"`), and cancels it on the server once it has an id. */
  signal?: AbortSignal;
  /** On `signal` abort, send `DELETE` with the id and token (default true). */
  cancelOnAbort?: boolean;
  /** Called on every 202. */
  onProgress?: (update: AsyncProgressUpdate) => void;
  /** Called once the first 202 arrives. */
  onStart?: (state: AsyncRequestState) => void;
  /** Seconds for `Prefer: wait=N` (default 20); 0 sends no `Prefer` header. */
  wait?: number;
  /** Consecutive transient failures tolerated (default 5). */
  retries?: number;
  /** Saves the state under this key in `storage`; cleared when the request settles. */
  persistKey?: string;
  /** Default `sessionStorage`. */
  storage?: Storage;
  /** Extra fetch options (e.g. `credentials`) for every request. */
  init?: RequestInit;
  /** Waiting polls the page holds at once per origin (default {@link MAX_WAITING_POLLS}). */
  maxWaitingPolls?: number;
  /** Follow the request over the server's shared event stream when a 202 names one (default true). */
  stream?: boolean;
}

/** The final answer. `T` is the body's type as the app's `done` renders it (not checked). */
export interface AsyncResult<T = unknown> {
  /** HTTP status of the final answer (200 unless the app set another 2xx). */
  status: number;
  /** Parsed JSON, or the text when it is not JSON. */
  body: T;
  headers: Headers;
  /** The `async_request_id` (undefined if the server answered at once). */
  id: string | undefined;
}

/** Starts an asynchronous request and polls it to its final answer. */
export declare function asyncRequest<T = unknown>(
  url: string | URL,
  options?: AsyncRequestOptions,
): Promise<AsyncResult<T>>;

/** Polls an existing request from a saved state (e.g. after a page reload). */
export declare function resumeAsyncRequest<T = unknown>(
  state: AsyncRequestState,
  options?: AsyncRequestOptions,
): Promise<AsyncResult<T>>;

/** Saves a request state (JSON) in a Storage; false when it could not. */
export declare function saveState(key: string, state: AsyncRequestState, storage?: Storage): boolean;

/** Loads a state saved with {@link saveState}; null when absent or unreadable. */
export declare function loadState(key: string, storage?: Storage): AsyncRequestState | null;

/** Removes a saved state. Never throws. */
export declare function clearState(key: string, storage?: Storage): void;

/** The event stream a `Link` header names (`rel="async-endpoint-stream"`), resolved; null if none. */
export declare function streamLink(header: string | null, requestUrl: string): string | null;

/** One server-sent event. */
export interface ServerSentEvent {
  event: string;
  data: string;
  retry: number | undefined;
}

/** A parser of `text/event-stream` text: `push(chunk)` returns the events that chunk completed. */
export declare function eventStreamParser(): { push(chunk: string): ServerSentEvent[] };

/** A fresh `Idempotency-Key` (a random v4 UUID). */
export declare function newIdempotencyKey(): string;

/**
 * What jQuery `error`/`fail` callbacks get when the failure has no JSON object body. Either form
 * also carries jqXHR's `status`, `responseJSON` and `responseText` (non-enumerable).
 */
export interface AsyncErrorPayload {
  error: AsyncRequestErrorKind;
  kind: AsyncRequestErrorKind;
  status: number | undefined;
  message: string;
}

/** The failure body the server sent (a JSON object), else an {@link AsyncErrorPayload}. */
export declare function errorPayload(error: unknown): Record<string, unknown> | AsyncErrorPayload;

/**
 * What `$.getAsyncRequest` returns: a jQuery promise (`done`/`fail`/`always`/`then`/`progress`)
 * with the original chainable `success` / `error`, and `abort()`, which stops polling and
 * cancels the request on the server.
 */
export interface AsyncJQueryPromise<T = unknown> {
  success(callback: (body: T, result: AsyncResult<T>) => void): this;
  error(
    callback: (failure: Record<string, unknown> | AsyncErrorPayload, error: AsyncRequestError) => void,
  ): this;
  done(callback: (body: T, result: AsyncResult<T>) => void): this;
  fail(
    callback: (failure: Record<string, unknown> | AsyncErrorPayload, error: AsyncRequestError) => void,
  ): this;
  always(callback: (...args: unknown[]) => void): this;
  progress(callback: (update: AsyncProgressUpdate) => void): this;
  then<R = T>(
    done?: ((body: T, result: AsyncResult<T>) => R | PromiseLike<R>) | null,
    fail?: ((failure: Record<string, unknown> | AsyncErrorPayload, error: AsyncRequestError) => unknown) | null,
  ): PromiseLike<R>;
  abort(reason?: unknown): this;
}

/** `$.getAsyncRequest(url, timeoutMs, options)`, as the plugin defines it. */
export type GetAsyncRequest = <T = unknown>(
  url: string | URL,
  timeout?: number | null,
  options?: AsyncRequestOptions,
) => AsyncJQueryPromise<T>;

/** The least a jQuery needs for the plugin: `Deferred()`. */
export interface JQueryLike {
  Deferred(): unknown;
}

/**
 * Registers `$.getAsyncRequest` on a jQuery (done at load when `globalThis.jQuery` exists) and
 * returns it.
 */
export declare function installJQuery<J extends JQueryLike>(
  jquery: J,
): J & { getAsyncRequest: GetAsyncRequest; getAsyncEndpoint: GetAsyncRequest };

declare global {
  /** Merges with `@types/jquery`'s `JQueryStatic` when the app has it. */
  interface JQueryStatic {
    getAsyncRequest: GetAsyncRequest;
    /** The name the original gem's JS used. */
    getAsyncEndpoint: GetAsyncRequest;
  }
}
