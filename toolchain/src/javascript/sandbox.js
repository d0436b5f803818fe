// Written by `wasmux build`, and run before the plugin's module: what
// componentize-js defines but the host does not offer is removed, so that
// `typeof fetch === 'undefined'` and a call fails with a ReferenceError the
// plugin can catch, instead of trapping the whole request.
delete globalThis.fetch;
