// Written by `wasmux build` and `wasmux dev`: what the built plugin's entry
// module and the dev runtime share. `guarded` answers an exception
// `handle` does not catch with an `internal` handler error naming it, its
// stack in the log, instead of a trap.
import { log } from 'wasmux:plugin/host@{{version}}';

// The cases of the world's `handler-error`: a value thrown with one of
// these tags is the handler's answer. Any other tag (a store's
// `no-such-store`, `other`) is not, and would trap the whole request.
const HANDLER_ERRORS = ['bad-request', 'unsupported', 'internal'];

function isHandlerError(error) {
  return error !== null && typeof error === 'object' && HANDLER_ERRORS.includes(error.tag) && 'val' in error;
}

// An error an import returned (componentize-js throws a `ComponentError`
// whose `payload` is the interface's error, e.g. wasi:keyvalue's
// `{ tag: 'other', val: 'kv max-keys …' }`), as text; else null.
function importError(error) {
  const payload = error !== null && typeof error === 'object' ? error.payload : undefined;
  if (payload === null || typeof payload !== 'object' || typeof payload.tag !== 'string') return null;
  return payload.val === undefined ? payload.tag : `${payload.tag}: ${payload.val}`;
}

// `handle(request)`, guarded; `shownStack` turns a stack into the one the
// log shows.
export function guarded(handle, request, shownStack = (stack) => stack) {
  try {
    return handle(request);
  } catch (error) {
    if (isHandlerError(error)) throw error;
    const stack = error instanceof Error && error.stack ? `\n${shownStack(error.stack).trimEnd()}` : '';
    const fromImport = importError(error);
    const what = fromImport === null ? `uncaught ${error}` : `uncaught error of an import: ${fromImport}`;
    log('error', `${what}${stack}`);
    throw { tag: 'internal', val: what };
  }
}
