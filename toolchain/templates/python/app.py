"""{{name}}: a wasmux plugin."""

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.Request) -> types.Response:
        """Answers every request with `Hello, ` + its content + `!`, as text."""
        name = request.content.decode("utf-8", errors="replace")
        print(f"greeting {name}")  # a line in the server's log
        return types.Response(
            content_type="text/plain",
            content_encoding="utf-8",
            fields=[],
            content=f"Hello, {name}!".encode("utf-8"),
        )
