// Written by `wasmux build` and `wasmux dev`: what the built plugin's entry
// module and the dev runtime share. `guarded` answers an exception
// `handle` does not catch with an `internal` handler error naming it, its
// stack in the log, instead of a trap.
import { log } from 'wasmux:plugin/host@{{version}}';

function isHandlerError(error) {
  return error !== null && typeof error === 'object' && typeof error.tag === 'string' && 'val' in error;
}

// `handle(request)`, guarded; `shownStack` turns a stack into the one the
// log shows.
export function guarded(handle, request, shownStack = (stack) => stack) {
  try {
    return handle(request);
  } catch (error) {
    if (isHandlerError(error)) throw error;
    const stack = error instanceof Error && error.stack ? `\n${shownStack(error.stack).trimEnd()}` : '';
    log('error', `uncaught ${error}${stack}`);
    throw { tag: 'internal', val: `uncaught ${error}` };
  }
}
