// `wasmux build && npm test` (or `node --test`): the built component as
// the server runs it, through `wasmux call`, its state in a data directory
// of this test's own. (`app.js` imports wasi:keyvalue, which only the
// component has: Node.js cannot import it.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const component = fileURLToPath(new URL('./dist/{{name}}.wasm', import.meta.url));

function call(content, dataDir) {
  // Throws (and fails the test) if wasmux call exits non-zero.
  return execFileSync('wasmux', ['call', component, '--deadline', '10s', '--content', content, '--data-dir', dataDir], { encoding: 'utf-8' }).trim();
}

test('the built component counts on from one call to the next', () => {
  const state = mkdtempSync(path.join(tmpdir(), '{{name}}-'));
  try {
    assert.equal(call('get visits', state), "Got response: b'visits=0'");
    assert.equal(call('incr visits', state), "Got response: b'visits=1'");
    assert.equal(call('incr visits', state), "Got response: b'visits=2'");
    assert.equal(call('get visits', state), "Got response: b'visits=2'");
    assert.equal(call('get other', state), "Got response: b'other=0'");
  } finally {
    rmSync(state, { recursive: true, force: true });
  }
});
