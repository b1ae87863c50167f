"""Run the real `kit` command in a subprocess, as a user would (exit codes, stderr, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        """A failing command must say one thing, on one line, and show no traceback."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert "Traceback" not in self.err, self.err
        assert len(lines) == 1, f"expected one error line, got:\n{self.err}"
        assert lines[0].startswith("kit: error: "), lines[0]
        return lines[0]


def kit(*args: str, env: dict | None = None, cwd=None, timeout: float = 120) -> Result:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "kit.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)
