// Runs the handler in Node.js: `npm test` (or `node --test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { handle } from './app.js';

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
