// Builds one JavaScript plugin into a component with componentize-js.
// Written by wasmux next to its own node_modules (so the import below
// resolves there) and run as:
//   node build.mjs SOURCE WIT_DIR WORLD OUT DISABLED_FEATURES_JSON [MODULE...]
// where each MODULE (the plugin's own, which SOURCE imports) is checked for
// syntax errors first, as SOURCE is.
// On failure it prints componentize-js's message alone and exits with 1.
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { parseAsync } from 'oxc-parser';

const [sourcePath, witPath, worldName, out, disabled, ...modules] = process.argv.slice(2);

// componentize-js parses the source with oxc too, but reports only how many
// errors it found; show them with their place in the file.
for (const path of [...modules, sourcePath]) {
  const parsed = await parseAsync(path, await readFile(path, 'utf-8'));
  if (parsed.errors.length > 0) {
    for (const error of parsed.errors) {
      console.error(error.codeframe || error.message);
    }
    process.exit(1);
  }
}

try {
  const { component } = await componentize({
    sourcePath,
    witPath,
    worldName,
    disableFeatures: JSON.parse(disabled),
  });
  await writeFile(out, component);
} catch (error) {
  console.error(error && error.message ? error.message : String(error));
  process.exit(1);
}
