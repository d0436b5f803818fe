// Builds one JavaScript plugin into a component with componentize-js.
// Written by wasmux next to its own node_modules (so the import below
// resolves there) and run as:
//   node build.mjs SOURCE WIT_DIR WORLD OUT DISABLED_FEATURES_JSON [MODULE...]
// where each MODULE (the plugin's own, which SOURCE imports) is checked for
// syntax errors first, as SOURCE is.
// On failure it prints componentize-js's message alone and exits with 1.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { checkSyntax } from './check.mjs';

const [sourcePath, witPath, worldName, out, disabled, ...modules] = process.argv.slice(2);

if (!(await checkSyntax([...modules, sourcePath]))) {
  process.exit(1);
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
