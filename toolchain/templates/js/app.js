// {{name}}: a wasmux plugin.

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Answers every request with `Hello, ` + its content + `!`, as text. */
export function handle(request) {
  const text = decoder.decode(request.content);
  return {
    contentType: 'text/plain',
    contentEncoding: 'utf-8',
    fields: [],
    content: encoder.encode(`Hello, ${text}!`),
  };
}
