"""Checks a command makes before any work starts, so that a bad output path fails at once with
one line naming it, instead of a traceback after the whole run has been computed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from engine.errors import UsageError


def check_output_dir(path: Path, option: str = "--out", *, named: Path | None = None) -> None:
    """Prove that ``path`` is, or can become, a directory a file can be written in.

    The proof is a real write (a temporary file, removed at once): permission bits say
    nothing to root, and a read-only mount only shows itself on write. Directories created
    for the probe are removed again, so a run refused later leaves nothing behind.
    ``named`` is the path the user gave, when ``path`` is its folder.

    Raises
    ------
    UsageError
        Naming ``option``, the path and what is wrong with it.
    """
    shown = f"{option} {named or path}"
    lineage = (path, *path.parents)
    existing = next((p for p in lineage if p.exists()), Path("."))
    if not existing.is_dir():
        if existing == path and named is None:
            raise UsageError(f"{shown}: is a file, expected a directory")
        raise UsageError(f"{shown}: lies under {existing}, which is a file")
    created = list(lineage[: lineage.index(existing)]) if existing in lineage else []
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".deepfactor-write-check-"):
            pass
    except OSError as error:
        raise UsageError(f"{shown}: cannot be written ({error.strerror or error})") from None
    finally:
        for directory in created:  # nearest first: children before their parents
            try:
                directory.rmdir()
            except OSError:
                break


def check_output_file(path: Path, option: str = "--out") -> None:
    """Prove that a file can be written at ``path``: not a directory, in a folder that is
    (or can become) writable.

    Raises
    ------
    UsageError
        Naming ``option``, the path and what is wrong with it.
    """
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, expected a file name")
    check_output_dir(path.parent, option, named=path)
