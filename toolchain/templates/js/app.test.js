// `wasmux build && npm test` (or `node --test`): the handler in Node.js,
// then the built component as the server runs it, through `wasmux call`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { handle } from './app.js';

const component = fileURLToPath(new URL('./dist/{{name}}.wasm', import.meta.url));

test('says hello', () => {
  const response = handle({
    contentType: 'text/plain',
    contentEncoding: 'utf-8',
    byteorder: 'little',
    fields: [],
    content: new TextEncoder().encode('world'),
  });
  assert.equal(response.contentType, 'text/plain');
  assert.equal(response.contentEncoding, 'utf-8');
  assert.equal(new TextDecoder().decode(response.content), 'Hello, world!');
});

test('the built component says hello', () => {
  // Throws (and fails the test) if wasmux call exits non-zero. A deadline
  // for a busy machine; a server gives 100ms unless told.
  const answer = execFileSync('wasmux', ['call', component, '--deadline', '10s', '--content-type', 'text/plain', '--content', 'world'], {
    encoding: 'utf-8',
  });
  assert.equal(answer.trim(), "Got response: b'Hello, world!'");
});
