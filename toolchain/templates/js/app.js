// {{name}}: a wasmux plugin.

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Answers every request with `Hello, ` + its content + `!`, as text. */
export function handle(request) {
  const name = decoder.decode(request.content);
  console.log(`greeting ${name}`); // a line in the server's log
  return {
    contentType: 'text/plain',
    contentEncoding: 'utf-8',
    fields: [],
    content: encoder.encode(`Hello, ${name}!`),
  };
}
