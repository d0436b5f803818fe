// Written by `wasmux dev`: the module of wasmux dev's JavaScript runtime,
// built once per WIT and componentize-js version and fed the plugin's
// source when it runs, so that a save costs a reload of the server's
// settings instead of a build and a compile.
//
// `wasmux dev` bundles the plugin's modules into one script (dev.mjs) and
// sends it in the plugin's setting `wasmux:dev-sources`, which this module
// reads with the host's `config`. On its first request an instance
// evaluates it, as the built component evaluates the plugin's module when
// it is built, and then answers as the built component does: the same
// sandbox (./sandbox.js), the same answer to an uncaught exception
// (./guard.js), stack traces in the plugin's own files and lines. What
// differs: the plugin's module-level code runs in each instance (on each
// request, unless instances are reused) instead of once when the
// component is built, so it counts against the request's deadline, and it
// may call the host.
//
// With the setting `wasmux:dev-check` too, a request only evaluates the
// plugin and answers a report (JSON: {"error": MESSAGE or null,
// "warnings": []}): what `wasmux dev` checks before it serves a save.
import './sandbox.js';
import * as host from 'wasmux:plugin/host@{{version}}';
import { guarded } from './guard.js';
// Every interface of the runtime's world, by name (written for the world
// the runtime is built for: `wasi:keyvalue/…` in a stateful plugin's).
import { modules } from './imports.js';

const SOURCES = 'wasmux:dev-sources';
const CHECK = 'wasmux:dev-check';
// The script's name in stack traces, before they are mapped back.
const SCRIPT = 'wasmux-dev-script.js';

const encoder = new TextEncoder();

// This instance's plugin: its module's exports and the sources they came
// from, once evaluated.
let plugin;

function evaluatePlugin() {
  const text = host.config(SOURCES);
  if (text === undefined || text === null) {
    throw new Error(`this is wasmux dev's JavaScript runtime; it serves the source wasmux dev sends it in ${SOURCES}, and there is none`);
  }
  const sources = JSON.parse(text);
  const module = { exports: {} };
  const require = (specifier) => {
    if (/^wasmux:plugin\/host@0\.1\.\d+$/.test(specifier)) return host;
    if (Object.hasOwn(modules, specifier)) return modules[specifier];
    throw new Error(`${specifier} cannot be imported here: wasmux dev's runtime serves the plugin's own modules and the interfaces of its world, ${Object.keys(modules).join(', ')} (\`wasmux dev --build\` serves the built component)`);
  };
  // Strict, as a module is; the script starts on the second line.
  const run = (0, eval)(`(function (require, module, exports) {'use strict';\n${sources.code}\n})\n//# sourceURL=${SCRIPT}`);
  try {
    run(require, module, module.exports);
  } catch (error) {
    if (error instanceof Error && error.stack) error.stack = shownStack(error.stack, sources);
    throw error;
  }
  return { exports: module.exports, sources };
}

// `stack` with each frame in the script put back in the plugin's file,
// line and column.
function shownStack(stack, sources) {
  return stack.replace(new RegExp(`@${SCRIPT.replace(/\./g, '\\.')}:(\\d+):(\\d+)`, 'g'), (frame, line, column) => {
    const segments = sources.lines[Number(line) - 2];
    if (!segments || segments.length === 0) return frame;
    const at = Number(column) - 1;
    let found = segments[0];
    for (const segment of segments) {
      if (segment[0] <= at) found = segment;
    }
    return `@${sources.sources[found[1]]}:${found[2] + 1}:${found[3] + 1}`;
  });
}

function check() {
  const report = { error: null, warnings: [] };
  try {
    evaluatePlugin();
  } catch (error) {
    const stack = error instanceof Error && error.stack ? `\n${error.stack.trimEnd()}` : '';
    report.error = `${error}${stack}`;
  }
  return { contentType: 'application/json', contentEncoding: 'utf-8', fields: [], content: encoder.encode(JSON.stringify(report)) };
}

export function handle(request) {
  const checking = host.config(CHECK);
  if (checking !== undefined && checking !== null) return check();
  if (plugin === undefined) {
    try {
      plugin = evaluatePlugin();
    } catch (error) {
      const stack = error instanceof Error && error.stack ? `\n${error.stack.trimEnd()}` : '';
      host.log('error', `the plugin's module failed: ${error}${stack}`);
      throw { tag: 'internal', val: `the plugin's module failed: ${error}` };
    }
  }
  const { exports, sources } = plugin;
  return guarded((request) => exports.handle(request), request, (stack) => shownStack(stack, sources));
}
