"""What both modules componentize-py initializes for wasmux share: the
built plugin's (`_wasmux_plugin`) and the dev runtime's (`_wasmux_dev`).
`wasmux build` and `wasmux dev` write it beside them (never into the
project). Importing it:

1. makes the modules that need what the sandbox refuses (sockets,
   subprocesses) fail when imported, with an error naming the module and
   why;
2. imports the bindings of every interface of the world (the host's, and
   `wasi:keyvalue`'s in a stateful plugin), so that they are in the
   snapshot.

Then the entry module calls, in order, `import_standard_library` (so that
an import inside a function finds any pure-Python module of the standard
library; one that cannot be imported here fails in the plugin with an
error that says why) and `freeze` (what was imported is set aside from
the garbage collector's work); at run time, `guarded` answers an exception
the handler does not catch with an `internal` handler error naming it,
its traceback in the log, instead of a trap (an `Err` that carries an
import's error, such as a store's, too).
"""

import ast
import gc
import importlib
import importlib.abc
import os
import sys
import traceback

from componentize_py_types import Err

# Modules that import but are of no use under the host, and why; importing
# one, or a module that needs one, raises ImportError.
REFUSED = {
    "socket": "the host refuses every network connection and name lookup",
    "_socket": "the host refuses every network connection and name lookup",
    "ssl": "the host refuses every network connection",
    "_ssl": "the host refuses every network connection",
    "select": "the host refuses every network connection",
    "selectors": "the host refuses every network connection",
    "subprocess": "a plugin cannot start processes",
    "_posixsubprocess": "a plugin cannot start processes",
    "multiprocessing": "a plugin cannot start processes",
    "_multiprocessing": "a plugin cannot start processes",
}

# Parts of the standard library that are not for plugins: tests, GUIs,
# installers, and modules that act when imported.
SKIPPED = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "turtle", "ensurepip", "venv",
    "pydoc_data", "lib2to3", "this", "antigravity", "__phello__", "_pyrepl", "site-packages",
}

# Modules that failed to import while the component was built, and why.
UNAVAILABLE = {}


def reason(name):
    """Why `name` (or the package it is in) cannot be imported, or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        why = REFUSED.get(prefix) or UNAVAILABLE.get(prefix)
        if why is not None:
            return why if prefix == name else f"{prefix} cannot be imported: {why}"
    return None


class Refusals(importlib.abc.MetaPathFinder):
    """Stops imports of refused and unavailable modules with an error that
    says why, instead of a `ModuleNotFoundError` or a module that fails
    later."""

    def find_spec(self, fullname, path=None, target=None):
        why = REFUSED.get(fullname) or UNAVAILABLE.get(fullname)
        if why is None:
            return None
        raise ImportError(f"{fullname} cannot be imported in a wasmux plugin: {why}", name=fullname)


sys.meta_path.insert(0, Refusals())

import wit_world.imports  # noqa: E402  (after the refusals)
from wit_world.imports import host, types  # noqa: E402

# Every interface of the world the component is built for (`store`,
# `atomics`, `batch` in a stateful plugin's), so that an import of one
# inside a function finds it as the standard library's are found.
for _binding in sorted(os.listdir(os.path.dirname(wit_world.imports.__file__))):
    if _binding.endswith(".py") and _binding != "__init__.py":
        importlib.import_module("wit_world.imports." + _binding[:-3])

# The cases of the world's `handler-error`: an `Err` holding one is the
# handler's answer; an `Err` holding another interface's error (a store's
# `Error_Other`) is not, and would trap the whole request.
HANDLER_ERRORS = (types.HandlerError_BadRequest, types.HandlerError_Unsupported, types.HandlerError_Internal)


def standard_library_modules():
    """The names of the standard library's pure-Python modules and packages."""
    # componentize-py mounts it at /python (`os.__file__` names where it was
    # before: os is frozen).
    root = next((p for p in sys.path if os.path.isfile(os.path.join(p, "os.py"))), None)
    if root is None:
        return []
    names = []
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        parts = [] if relative == "." else relative.split(os.sep)
        if parts and (
            parts[0] in SKIPPED
            or not all(p.isidentifier() for p in parts)
            or not os.path.isfile(os.path.join(directory, "__init__.py"))
        ):
            subdirectories[:] = []
            continue
        subdirectories.sort()
        if parts:
            names.append(".".join(parts))
        for file in sorted(files):
            stem, extension = os.path.splitext(file)
            if extension != ".py" or not stem.isidentifier() or stem in ("__init__", "__main__"):
                continue
            if not parts and stem in SKIPPED:
                continue
            names.append(".".join(parts + [stem]))
    return names


def failure(error):
    """Why an import failed, naming the refused module it needed, if any."""
    needed = getattr(error, "name", None)
    if isinstance(error, ImportError) and needed:
        why = reason(needed)
        if why is not None:
            return f"it needs {needed}, and {why}" if not why.startswith(needed) else f"it needs {why}"
    return f"{type(error).__name__}: {error}"


def import_standard_library():
    for name in standard_library_modules():
        if name in sys.modules or reason(name) is not None:
            continue
        try:
            importlib.import_module(name)
        except BaseException as error:  # noqa: BLE001  (a module that cannot work here at all)
            UNAVAILABLE[name] = failure(error)


def imports_that_fail(sources):
    """`path:line: message` for each import in `sources` (pairs of the path
    shown and the module's text) that will fail when it runs."""
    lines = []
    for shown, text in sources:
        try:
            tree = ast.parse(text, shown)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                why = reason(name)
                if why is not None:
                    lines.append(f"{shown}:{node.lineno}: importing {name} will fail: {why}")
                    break
    return lines


def freeze():
    """What was imported lives as long as the instance: the garbage
    collector need not look at it again (a request's collections stay as
    short as without the standard library)."""
    gc.collect()
    gc.freeze()


def guarded(handle, request):
    """`handle(request)`, with an exception it does not catch answered as an
    `internal` handler error naming it, its traceback in the log."""
    try:
        return handle(request)
    except Err as error:
        if isinstance(error.value, HANDLER_ERRORS):
            raise
        host.log(host.Level.ERROR, described(error))
        raise Err(types.HandlerError_Internal(f"uncaught error of an import: {error.value!r}"))
    except Exception as error:
        host.log(host.Level.ERROR, described(error))
        raise Err(types.HandlerError_Internal(f"uncaught {type(error).__name__}: {error}"))


def described(error):
    """`error` and where it was raised, as a traceback without source lines:
    a plugin has no files to read them from (and without WASI, trying
    would trap)."""
    lines = ["Traceback (most recent call last):"]
    for frame, line in traceback.walk_tb(error.__traceback__):
        lines.append(f'  File "{frame.f_code.co_filename}", line {line}, in {frame.f_code.co_name}')
    lines.append(f"{type(error).__name__}: {error}")
    return "\n".join(lines)
