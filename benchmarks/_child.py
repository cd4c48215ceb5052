"""Run a measured step in its own Python process (its peak memory is its own), for the benchmark scripts."""

from __future__ import annotations

import subprocess
import sys


def run_child(code: str, *args) -> str:
    """Run ``code`` with ``args`` in a fresh interpreter; return the last line it printed (its result)."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""
