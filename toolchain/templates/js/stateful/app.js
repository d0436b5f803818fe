// {{name}}: a wasmux plugin that keeps state (the world `stateful-handler`).
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function answer(text) {
  return { contentType: 'text/plain', contentEncoding: 'utf-8', fields: [], content: encoder.encode(text) };
}

/** `incr NAME` adds one to the counter NAME and answers `NAME=N`; `get
 * NAME` answers `NAME=N` (0 if it was never counted). */
export function handle(request) {
  const [command, ...rest] = decoder.decode(request.content).split(' ');
  const name = rest.join(' ');
  if ((command !== 'incr' && command !== 'get') || name === '') {
    throw { tag: 'bad-request', val: 'send `incr NAME` or `get NAME`' };
  }
  let count;
  try {
    // The plugin's own bucket, dropped when done: an instance the server
    // reuses for many requests may hold only a few buckets open at once.
    const bucket = open('default');
    try {
      if (command === 'incr') {
        count = increment(bucket, name, 1n);
      } else {
        // A counter is kept as its decimal ASCII (the bytes `42`).
        const value = bucket.get(name);
        count = value === undefined ? 0 : decoder.decode(value);
      }
    } finally {
      bucket[Symbol.dispose]();
    }
  } catch (error) {
    // Every store call may fail with the interface's error, thrown as an
    // Error whose `payload` is `{ tag: 'other', val: message }` (or
    // `{ tag: 'no-such-store' }`, `{ tag: 'access-denied' }`): here the
    // request fails, saying why.
    const why = error.payload ? [error.payload.tag, error.payload.val].filter((part) => part !== undefined).join(': ') : String(error);
    throw { tag: 'internal', val: `the store failed: ${why}` };
  }
  return answer(`${name}=${count}`);
}
