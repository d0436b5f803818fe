"""The guide's search as a wasmux plugin, in Python.

Answers `{"action": "search", "value": …}` from the guide's dictionary with
`{"result": …}` as `text/json` in UTF-8, byte for byte as the guide's server
(`examples/python/libapp.py`) and the Rust plugin `plugins/search` do.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

# The guide's dictionary.
REQUEST_SEARCH = {
    "morpheus": "Follow the white rabbit. \U0001f430",
    "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
    "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
}

# The encodings the Rust plugin decodes, under Python's codec names.
ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8", "u8": "utf-8", "utf": "utf-8",
    "ascii": "ascii", "us-ascii": "ascii", "646": "ascii",
    "latin-1": "latin-1", "latin1": "latin-1", "iso-8859-1": "latin-1", "iso8859-1": "latin-1", "l1": "latin-1",
}

KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}


def answer(request: dict) -> str:
    """The guide's `result` for a decoded request object."""
    action = request.get("action")
    if action != "search":
        return f'Error: invalid action "{action}".'
    query = request.get("value")
    found = REQUEST_SEARCH.get(query) if isinstance(query, str) else None
    return found or f'No match for "{query}".'


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.Request) -> types.Response:
        declared = request.content_encoding
        encoding = ENCODINGS.get(declared.strip().lower().replace("_", "-").replace(" ", "-"))
        if encoding is None:
            raise Err(types.HandlerError_Unsupported(f'unsupported content-encoding "{declared}" (use utf-8, ascii or latin-1)'))
        try:
            decoded = json.loads(request.content.decode(encoding))
        except UnicodeDecodeError as e:
            raise Err(types.HandlerError_BadRequest(f"content is not valid {declared}: {e}"))
        except ValueError as e:
            raise Err(types.HandlerError_BadRequest(f"content is not valid JSON: {e}"))
        if not isinstance(decoded, dict):
            raise Err(types.HandlerError_BadRequest(f"request must be a JSON object, got {KINDS.get(type(decoded), 'a value')}"))
        content = json.dumps({"result": answer(decoded)}, ensure_ascii=False).encode("utf-8")
        return types.Response("text/json", "utf-8", [], content)
