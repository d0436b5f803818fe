// The guide's answers, in Node.js: `npm test` (or `node --test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { handle } from './app.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function search(content, contentEncoding = 'utf-8') {
  const response = handle({ contentType: 'text/json', contentEncoding, byteorder: 'little', fields: [], content: encoder.encode(content) });
  assert.equal(response.contentType, 'text/json');
  assert.equal(response.contentEncoding, 'utf-8');
  return decoder.decode(response.content);
}

test("the guide's answers, byte for byte", () => {
  assert.equal(search('{"action": "search", "value": "morpheus"}'), '{"result": "Follow the white rabbit. 🐰"}');
  assert.equal(search('{"action": "search", "value": "ring"}'), '{"result": "In the caves beneath the Misty Mountains. 💍"}');
  assert.equal(search('{"action": "search", "value": "🐶"}'), '{"result": "🐾 Playing ball! 🏐"}');
  assert.equal(search('{"action": "search", "value": "neo"}'), '{"result": "No match for \\"neo\\"."}');
  assert.equal(search('{"action": "find", "value": "neo"}'), '{"result": "Error: invalid action \\"find\\"."}');
  assert.equal(search('{"value": "neo"}'), '{"result": "Error: invalid action \\"None\\"."}');
  assert.equal(search('{"action": "search", "value": ["a", 1, null, true]}'), `{"result": "No match for \\"['a', 1, None, True]\\"."}`);
});

test('bad requests are refused', () => {
  assert.throws(() => search('{nope'), { tag: 'bad-request' });
  assert.throws(() => search('[1]'), { tag: 'bad-request', val: 'request must be a JSON object, got a list' });
  assert.throws(() => search('{}', 'utf-16'), { tag: 'unsupported' });
});
