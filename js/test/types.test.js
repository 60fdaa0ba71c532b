import test from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as client from "../../crates/async-endpoint/assets/async_endpoint.js";

// The TypeScript declarations (async_endpoint.d.ts) declare exactly what the module exports;
// `npm run typecheck` compiles a typed example against them.
test("async_endpoint.d.ts declares every export of the module, and nothing else", () => {
  const dts = readFileSync(new URL("../async_endpoint.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(client).sort());
});
