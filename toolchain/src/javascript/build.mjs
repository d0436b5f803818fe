// Builds one JavaScript plugin into a component with componentize-js.
// Written by wasmux next to its own node_modules (so the import below
// resolves there) and run as:
//   node build.mjs SOURCE WIT_DIR WORLD OUT DISABLED_FEATURES_JSON
// On failure it prints componentize-js's message alone and exits with 1.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [sourcePath, witPath, worldName, out, disabled] = process.argv.slice(2);
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
