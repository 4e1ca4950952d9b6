"""The command line as a user runs it: ``python -m services.commands.cli`` in a child process,
from the repository root unless told otherwise, run to its end with its output captured."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = (sys.executable, "-m", "services.commands.cli")


def deepfactor(
    *arguments: str,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``deepfactor ARGUMENTS``; ``env`` is the child's whole environment (None: this
    process's)."""
    return subprocess.run(
        [*COMMAND, *arguments],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
