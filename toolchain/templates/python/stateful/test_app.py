"""Calls the built plugin as the server would: `wasmux build`, then
`python3 -m unittest`. Each test keeps its state in a data directory of
its own."""

import pathlib
import subprocess
import tempfile
import unittest

COMPONENT = pathlib.Path(__file__).parent / "dist" / "{{name}}.wasm"


def call(content: str, data_dir: str) -> str:
    done = subprocess.run(
        # A deadline for a busy machine; a server gives 100ms unless told.
        ["wasmux", "call", str(COMPONENT), "--deadline", "10s", "--content", content, "--data-dir", data_dir],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise AssertionError(f"wasmux call failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


class CounterTest(unittest.TestCase):
    def test_counts_on_from_one_call_to_the_next(self):
        with tempfile.TemporaryDirectory() as state:
            self.assertEqual(call("get visits", state), "Got response: b'visits=0'")
            self.assertEqual(call("incr visits", state), "Got response: b'visits=1'")
            self.assertEqual(call("incr visits", state), "Got response: b'visits=2'")
            self.assertEqual(call("get visits", state), "Got response: b'visits=2'")
            self.assertEqual(call("get other", state), "Got response: b'other=0'")


if __name__ == "__main__":
    unittest.main()
