// Written by `wasmux build`: the module componentize-js builds, around the
// plugin's own module ({{module}}). It
// - removes what componentize-js defines but a plugin cannot use (first,
//   in ./sandbox.js, before the plugin's module runs);
// - answers an exception `handle` does not catch with an `internal`
//   handler error naming it, its stack in the log, instead of a trap
//   (./guard.js).
import './sandbox.js';
import { guarded } from './guard.js';
import * as plugin from '{{module}}';

export function handle(request) {
  return guarded((request) => plugin.handle(request), request);
}
