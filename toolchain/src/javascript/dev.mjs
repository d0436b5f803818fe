// Prepares a JavaScript plugin's source for wasmux dev's runtime, which
// evaluates it instead of a build. Written by wasmux next to its own
// node_modules and run in the project's folder as:
//   node dev.mjs MODULE
// It checks MODULE for syntax errors (as build.mjs does), bundles it and
// the modules it imports into one CommonJS-style script with rolldown
// (`wasmux:` and `wasi:` imports, and packages, become `require` calls the
// runtime answers), and prints JSON on standard output:
//   {"module": MODULE, "code": SCRIPT, "sources": [PATH...],
//    "lines": [[[COLUMN, SOURCE, LINE, COLUMN]...]...]}
// where `lines` maps each line of SCRIPT back to the plugin's files
// (0-based), so that the runtime shows stack traces in their lines.
// On failure it prints the error and exits with 1.
import path from 'node:path';
import { rolldown } from 'rolldown';
import { checkSyntax } from './check.mjs';

const [module] = process.argv.slice(2);

if (!(await checkSyntax([module]))) {
  process.exit(1);
}

// Anything not a file of the project stays an import, answered (or
// refused, naming it) by the runtime.
const external = (id) => !id.startsWith('.') && !path.isAbsolute(id);

let output;
try {
  const bundle = await rolldown({ input: module, external, treeshake: false, logLevel: 'silent', cwd: process.cwd() });
  ({ output } = await bundle.generate({ dir: process.cwd(), format: 'cjs', exports: 'named', sourcemap: true }));
} catch (error) {
  console.error(error && error.message ? error.message : String(error));
  process.exit(1);
}
const [chunk] = output;
const root = process.cwd();
// rolldown names sources relative to where the output would be written:
// the project's folder.
const sources = chunk.map.sources.map((source) => path.relative(root, path.resolve(root, source)).split(path.sep).join('/'));
const code = chunk.code.replace(/\n\/\/# sourceMappingURL=.*\s*$/, '\n');
process.stdout.write(JSON.stringify({ module, code, sources, lines: decodeMappings(chunk.map.mappings) }));

// A source map's `mappings` (Base64 VLQ) as, per generated line, the
// segments [column, source, line, column], every number absolute.
function decodeMappings(mappings) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const lines = [];
  let source = 0;
  let line = 0;
  let column = 0;
  for (const text of mappings.split(';')) {
    const segments = [];
    let generated = 0;
    for (const segment of text.split(',')) {
      if (segment === '') continue;
      const values = [];
      let value = 0;
      let shift = 0;
      for (const char of segment) {
        const digit = alphabet.indexOf(char);
        value += (digit & 31) << shift;
        if (digit & 32) {
          shift += 5;
        } else {
          values.push(value & 1 ? -(value >>> 1) : value >>> 1);
          value = 0;
          shift = 0;
        }
      }
      generated += values[0];
      if (values.length >= 4) {
        source += values[1];
        line += values[2];
        column += values[3];
        segments.push([generated, source, line, column]);
      }
    }
    lines.push(segments);
  }
  return lines;
}
