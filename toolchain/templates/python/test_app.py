"""Calls the built plugin as the server would: `wasmux build`, then
`python3 -m unittest`."""

import pathlib
import subprocess
import unittest

COMPONENT = pathlib.Path(__file__).parent / "dist" / "{{name}}.wasm"


def call(content: str) -> str:
    done = subprocess.run(
        # A deadline for a busy machine; a server gives 100ms unless told.
        ["wasmux", "call", str(COMPONENT), "--deadline", "10s", "--content-type", "text/plain", "--content", content],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise AssertionError(f"wasmux call failed: {done.stderr}")
    return done.stdout.strip()


class HelloTest(unittest.TestCase):
    def test_says_hello(self):
        self.assertEqual(call("world"), "Got response: b'Hello, world!'")


if __name__ == "__main__":
    unittest.main()
