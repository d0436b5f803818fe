"""The module componentize-py initializes for wasmux dev's Python runtime:
the interpreter, the standard library and this loader, built once per
WIT and componentize-py version, and fed the plugin's source when it runs.
A save under `wasmux dev` then costs a reload of the server's settings,
not a build and a compile.

`wasmux dev` reads the project's Python files into the plugin's setting
`wasmux:dev-sources` (JSON: `{"module": "app", "files": {"app.py":
"…"}}`), which this module reads with the host's `config`. On its first
request an instance imports the plugin's module from there, as the built
component imports it from the project when it is built, and then answers
as the built component does: the same standard library, the same
refusals, the same answer to an uncaught exception. What differs: the
plugin's module-level code runs in each instance (on each request, unless
instances are reused) instead of once when the component is built, so it
counts against the request's deadline, and it may call the host.

With the setting `wasmux:dev-check` too, a request only imports the
plugin and answers a report (JSON: `{"error": TRACEBACK or null,
"warnings": […]}`): what `wasmux dev` checks before it serves a save, as
`wasmux build` checks a build.
"""

import importlib
import importlib.abc
import importlib.util
import json
import linecache
import sys
import traceback

import _wasmux_sandbox as sandbox
import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

SOURCES = "wasmux:dev-sources"
CHECK = "wasmux:dev-check"

# Where the built component's project is mounted: the plugin's file names
# (in tracebacks) are the built component's.
ROOT = "/0"

# What was imported before the standard library: a module of the project
# with one of these names is shadowed by it in the built component too.
STARTUP = frozenset(sys.modules)

sandbox.import_standard_library()
sandbox.freeze()


class Sources(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the plugin's modules from the text `wasmux dev` sent."""

    def __init__(self, files):
        self.files = files
        self.imported = []

    def top_level_names(self):
        return {path.split("/")[0].removesuffix(".py") for path in self.files}

    def find_spec(self, fullname, path=None, target=None):
        relative = fullname.replace(".", "/")
        for file, package in ((relative + ".py", False), (relative + "/__init__.py", True)):
            if file in self.files:
                spec = importlib.util.spec_from_loader(fullname, self, origin=f"{ROOT}/{file}", is_package=package)
                spec.has_location = True
                if package:
                    spec.submodule_search_locations = [f"{ROOT}/{relative}"]
                return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        origin = module.__spec__.origin
        file = origin[len(ROOT) + 1:]
        text = self.files[file]
        self.imported.append((file, text))
        module.__file__ = origin
        exec(compile(text, origin, "exec"), module.__dict__)


def import_plugin():
    """The plugin's `WitWorld` class, its module imported from the sent
    source, and the modules imported from there."""
    sent = host.config(SOURCES)
    if sent is None:
        raise RuntimeError(f"this is wasmux dev's Python runtime; it serves the source wasmux dev sends it in {SOURCES}, and there is none")
    sent = json.loads(sent)
    sources = Sources(sent["files"])
    # The project's modules come first on the built component's path: one
    # named as a standard-library module the standard library imported
    # after start-up is the project's.
    for name in sources.top_level_names():
        if name not in STARTUP:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]
    sys.meta_path.insert(1, sources)
    module = importlib.import_module(sent["module"])
    world = getattr(module, "WitWorld", None)
    if not isinstance(world, type):
        raise AttributeError(f"module {sent['module']!r} defines no class WitWorld")
    return world, sources.imported


_plugin = None


def plugin():
    """This instance's plugin, imported on its first request."""
    global _plugin
    if _plugin is None:
        world, _ = import_plugin()
        _plugin = world()
    return _plugin


def check():
    """The report of the setting `wasmux:dev-check`."""
    report = {"error": None, "warnings": []}
    try:
        _, imported = import_plugin()
        report["warnings"] = sandbox.imports_that_fail(imported)
    except BaseException as error:  # noqa: BLE001  (the check reports whatever the import raises)
        report["error"] = traceback_in_plugin(error)
    return types.Response("application/json", "utf-8", [], json.dumps(report).encode())


def traceback_in_plugin(error):
    """`error`'s traceback, with source lines, through the plugin's own
    files only (not this loader's, nor the import system's)."""
    files = json.loads(host.config(SOURCES) or "{}").get("files", {})
    paths = set()
    for file, text in files.items():
        path = f"{ROOT}/{file}"
        paths.add(path)
        linecache.cache[path] = (len(text), None, text.splitlines(True), path)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename in paths]
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) if frames else ""
    return (text + "".join(traceback.format_exception_only(error))).rstrip()


class WitWorld(wit_world.WitWorld):
    def handle(self, request):
        if host.config(CHECK) is not None:
            return check()
        try:
            world = plugin()
        except Exception as error:
            host.log(host.Level.ERROR, sandbox.described(error))
            raise Err(types.HandlerError_Internal(f"the plugin's module failed: {type(error).__name__}: {error}"))
        return sandbox.guarded(world.handle, request)
