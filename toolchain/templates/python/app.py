"""{{name}}: a wasmux plugin."""

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.Request) -> types.Response:
        """Answers every request with `Hello, ` + its content + `!`, as text."""
        text = request.content.decode("utf-8", errors="replace")
        return types.Response(
            content_type="text/plain",
            content_encoding="utf-8",
            fields=[],
            content=f"Hello, {text}!".encode("utf-8"),
        )
