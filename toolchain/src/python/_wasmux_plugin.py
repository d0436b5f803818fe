"""The module componentize-py initializes for a wasmux plugin whose own
module is `{{module}}`. `wasmux build` writes it and `_wasmux_sandbox`
into a folder of its own (never into the project), next to which
componentize-py mounts the project, and it runs once: when the component
is built.

componentize-py keeps what was imported while the component was built and
nothing else (a plugin has no files to import from when it runs). So this
module, in order:

1. sets up the sandbox's refusals (`_wasmux_sandbox`, imported first);
2. imports the plugin's module, so that its errors are the build's;
3. imports the rest of the standard library's pure-Python modules, so that
   an import inside a function finds them;
4. lists the plugin's imports that will fail (a module-level one already
   failed the build) in `wasmux-report.txt` beside this file, which
   `wasmux build` shows as warnings;
5. sets what was imported aside from the garbage collector's work;
6. answers an exception the handler does not catch with an `internal`
   handler error naming it, its traceback in the log, instead of a trap.
"""

import os
import re
import sys

import _wasmux_sandbox as sandbox

from {{module}} import WitWorld as _PluginWorld  # noqa: E402  (after the refusals)


def plugin_sources():
    """The path (relative to the project) and text of each of the plugin's
    own modules that were imported (those from its project)."""
    own = os.path.dirname(os.path.abspath(__file__))
    roots = [p for p in sys.path if re.fullmatch(r"/\d+", p) and p != own]
    sources = []
    for module in sorted(list(sys.modules.values()), key=lambda m: getattr(m, "__name__", "")):
        path = getattr(module, "__file__", None) or ""
        root = next((r for r in roots if path.startswith(r + "/")), None)
        if root is None or not path.endswith(".py"):
            continue
        try:
            with open(path, encoding="utf-8") as source:
                sources.append((os.path.relpath(path, root), source.read()))
        except (OSError, ValueError):
            continue
    return sources


sandbox.import_standard_library()

try:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "wasmux-report.txt"), "w", encoding="utf-8") as report:
        report.writelines(line + "\n" for line in sandbox.imports_that_fail(plugin_sources()))
except OSError:
    pass

sandbox.freeze()


class WitWorld(_PluginWorld):
    def handle(self, request):
        return sandbox.guarded(lambda request: _PluginWorld.handle(self, request), request)
