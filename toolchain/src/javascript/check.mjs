// Checks JavaScript modules for syntax errors before componentize-js or
// the dev runtime's bundler sees them: both parse with oxc too, but
// componentize-js reports only how many errors it found. Shared by
// build.mjs and dev.mjs.
import { readFile } from 'node:fs/promises';
import { parseAsync } from 'oxc-parser';

// Prints each module's syntax errors with their place in the file (a code
// frame); returns whether every module parsed.
export async function checkSyntax(paths) {
  for (const path of paths) {
    const parsed = await parseAsync(path, await readFile(path, 'utf-8'));
    if (parsed.errors.length > 0) {
      for (const error of parsed.errors) {
        console.error(error.codeframe || error.message);
      }
      return false;
    }
  }
  return true;
}
