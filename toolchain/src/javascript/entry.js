// Written by `wasmux build`: the module componentize-js builds, around the
// plugin's own module ({{module}}). It
// - removes what componentize-js defines but a plugin cannot use (first,
//   in ./sandbox.js, before the plugin's module runs);
// - answers an exception `handle` does not catch with an `internal`
//   handler error naming it, its stack in the log, instead of a trap.
import './sandbox.js';
import { log } from 'wasmux:plugin/host@{{version}}';
import * as plugin from '{{module}}';

function isHandlerError(error) {
  return error !== null && typeof error === 'object' && typeof error.tag === 'string' && 'val' in error;
}

export function handle(request) {
  try {
    return plugin.handle(request);
  } catch (error) {
    if (isHandlerError(error)) throw error;
    const stack = error instanceof Error && error.stack ? `\n${error.stack.trimEnd()}` : '';
    log('error', `uncaught ${error}${stack}`);
    throw { tag: 'internal', val: `uncaught ${error}` };
  }
}
