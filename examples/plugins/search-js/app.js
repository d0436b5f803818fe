// The guide's search as a wasmux plugin, in JavaScript.
//
// Answers `{"action": "search", "value": …}` from the guide's dictionary
// with `{"result": …}` as `text/json` in UTF-8, byte for byte as the guide's
// server (`examples/python/libapp.py`) and the Rust plugin `plugins/search`
// do. The guide writes JSON with Python's `json.dumps(obj,
// ensure_ascii=False)`: `{"result": "…"}` with a space after the colon, and
// non-ASCII text as is; `JSON.stringify` of the string alone gives the same
// escapes for the text itself.

// The guide's dictionary.
const REQUEST_SEARCH = new Map([
  ['morpheus', 'Follow the white rabbit. \u{1f430}'],
  ['ring', 'In the caves beneath the Misty Mountains. \u{1f48d}'],
  ['\u{1f436}', '\u{1f43e} Playing ball! \u{1f3d0}'],
]);

// The encodings the Rust plugin decodes, under TextDecoder's labels.
const ENCODINGS = new Map([
  ...['utf-8', 'utf8', 'u8', 'utf'].map((name) => [name, 'utf-8']),
  ...['ascii', 'us-ascii', '646'].map((name) => [name, 'ascii']),
  ...['latin-1', 'latin1', 'iso-8859-1', 'iso8859-1', 'l1'].map((name) => [name, 'latin-1']),
]);

const encoder = new TextEncoder();

/** Python's `str()` of a decoded JSON value, as the guide's f-strings show it. */
export function pythonStr(value) {
  return typeof value === 'string' ? value : pythonRepr(value);
}

function pythonRepr(value) {
  if (value === null || value === undefined) return 'None';
  if (value === true) return 'True';
  if (value === false) return 'False';
  if (typeof value === 'number') return pythonNumber(value);
  if (typeof value === 'string') return stringRepr(value);
  if (Array.isArray(value)) return `[${value.map(pythonRepr).join(', ')}]`;
  return `{${Object.entries(value).map(([k, v]) => `${stringRepr(k)}: ${pythonRepr(v)}`).join(', ')}}`;
}

// Numbers as JavaScript shows them: like Python for integers; the guide's
// client only ever sends strings.
function pythonNumber(n) {
  return String(n);
}

function stringRepr(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const c of s) {
    const code = c.codePointAt(0);
    if (c === '\\') out += '\\\\';
    else if (c === '\n') out += '\\n';
    else if (c === '\r') out += '\\r';
    else if (c === '\t') out += '\\t';
    else if (c === quote) out += `\\${c}`;
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += c;
  }
  return out + quote;
}

/** The guide's `result` for a decoded request object. */
export function answer(request) {
  const action = Object.hasOwn(request, 'action') ? request.action : null;
  if (action !== 'search') return `Error: invalid action "${pythonStr(action)}".`;
  const query = Object.hasOwn(request, 'value') ? request.value : null;
  const found = typeof query === 'string' ? REQUEST_SEARCH.get(query) : undefined;
  return found || `No match for "${pythonStr(query)}".`;
}

/** `{"result": text}` as the guide's `json.dumps(..., ensure_ascii=False)` writes it. */
export function guideJson(text) {
  // JSON.stringify escapes `"`, `\\` and control characters as json.dumps
  // does (`\n`, `\u0001`), and leaves the rest of the text as it is.
  return `{"result": ${JSON.stringify(text)}}`;
}

function kind(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return { boolean: 'a boolean', number: 'a number', string: 'a string' }[typeof value] ?? 'a value';
}

function decode(content, declared) {
  const encoding = ENCODINGS.get(declared.trim().toLowerCase().replaceAll('_', '-').replaceAll(' ', '-'));
  if (encoding === undefined) {
    throw { tag: 'unsupported', val: `unsupported content-encoding "${declared}" (use utf-8, ascii or latin-1)` };
  }
  if (encoding === 'latin-1') return String.fromCharCode(...content);
  const at = encoding === 'ascii' ? content.findIndex((b) => b > 0x7f) : -1;
  if (at >= 0) {
    throw { tag: 'bad-request', val: `content is not valid ${declared}: byte 0x${content[at].toString(16).padStart(2, '0')} at offset ${at} is not ASCII` };
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(content);
  } catch (e) {
    throw { tag: 'bad-request', val: `content is not valid ${declared}: ${e.message}` };
  }
}

export function handle(request) {
  const text = decode(request.content, request.contentEncoding);
  let decoded;
  try {
    decoded = JSON.parse(text);
  } catch (e) {
    throw { tag: 'bad-request', val: `content is not valid JSON: ${e.message}` };
  }
  if (typeof decoded !== 'object' || decoded === null || Array.isArray(decoded)) {
    throw { tag: 'bad-request', val: `request must be a JSON object, got ${kind(decoded)}` };
  }
  return {
    contentType: 'text/json',
    contentEncoding: 'utf-8',
    fields: [],
    content: encoder.encode(guideJson(answer(decoded))),
  };
}
