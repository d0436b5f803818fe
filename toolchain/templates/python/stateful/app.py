"""{{name}}: a wasmux plugin that keeps state (the world `stateful-handler`)."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import atomics, store, types


def answer(text: str) -> types.Response:
    return types.Response(content_type="text/plain", content_encoding="utf-8", fields=[], content=text.encode("utf-8"))


def described(error: store.Error) -> str:
    """The store's error as text: `Error_Other` carries a message (a limit,
    a store that cannot be reached); the others name what was refused."""
    if isinstance(error, store.Error_Other):
        return error.value
    return "no such store" if isinstance(error, store.Error_NoSuchStore) else "access denied"


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.Request) -> types.Response:
        """`incr NAME` adds one to the counter NAME and answers `NAME=N`;
        `get NAME` answers `NAME=N` (0 if it was never counted)."""
        command, _, name = request.content.decode("utf-8", errors="replace").partition(" ")
        if command not in ("incr", "get") or not name:
            raise Err(types.HandlerError_BadRequest("send `incr NAME` or `get NAME`"))
        try:
            # The plugin's own bucket; it is released at the end of `with`.
            with store.open("default") as bucket:
                if command == "incr":
                    count = atomics.increment(bucket, name, 1)
                else:
                    # A counter is kept as its decimal ASCII (b"42").
                    value = bucket.get(name)
                    count = int(value) if value is not None else 0
        except Err as error:
            # Every store call may fail with the interface's error: here
            # the request fails, saying why.
            raise Err(types.HandlerError_Internal(f"the store failed: {described(error.value)}"))
        return answer(f"{name}={count}")
