// A typed app using the client: compiled with `tsc --noEmit` (npm run typecheck), never run.
import {
  asyncRequest,
  AsyncRequestError,
  installJQuery,
  loadState,
  resumeAsyncRequest,
  type AsyncRequestState,
  type AsyncResult,
} from "async-endpoint";

interface MyOutput {
  some_data: string;
  another_data: string;
}

export async function fetchResult(signal: AbortSignal): Promise<string> {
  try {
    const { body, status }: AsyncResult<MyOutput> = await asyncRequest<MyOutput>("/my_endpoint?param_1=a", {
      timeout: 60_000,
      signal,
      onProgress: ({ status, progress }) => console.log(status, progress?.percent, progress?.message),
      onStart: (state: AsyncRequestState) => console.log(state.id),
    });
    return `${status}: ${body.some_data}`;
  } catch (e) {
    if (!(e instanceof AsyncRequestError)) throw e;
    if (e.kind === "failed") return `failed ${e.status}: ${JSON.stringify(e.body)}`;
    return `${e.kind}: ${e.message}`;
  }
}

export async function resume(): Promise<unknown> {
  const saved = loadState("report");
  const result = await (saved
    ? resumeAsyncRequest(saved, { persistKey: "report" })
    : asyncRequest("/report", { method: "POST", body: { month: "2024-05" }, persistKey: "report" }));
  return result.body;
}

// The jQuery plugin, on @types/jquery's `$` (registered at load, or by hand):
export function withJQuery(): void {
  installJQuery($);
  const request = $.getAsyncRequest<MyOutput>("/my_endpoint", 10000)
    .success(function (r) {
      console.log(r.some_data);
    })
    .error(function (r) {
      console.log(r);
    })
    .progress(({ status }) => console.log(status));
  request.abort();
}

// @ts-expect-error: the timeout is milliseconds, not a string
$.getAsyncRequest("/my_endpoint", "10s");
