"""The repository holds no path that only exists on one machine, and its tests need nothing beside
the checkout.

Both checks read the files git would ship: the tracked ones plus new files git does not ignore
(``git ls-files --cached --others --exclude-standard``), as they are in the working tree, so a
path is caught before it is committed. Where git or the ``.git`` folder is absent (an
unpacked archive) they walk the tree instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

TEXT_SUFFIXES = {".py", ".toml", ".md", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".bash", ".txt"}
TEXT_NAMES = {"Makefile", ".ci/run"}

# Roots of machine-specific absolute paths: build machines, home folders, temporary folders.
# Written as names so that this file does not match its own patterns.
MACHINE_ROOTS = ("work", "home", "root", "farm", "tmp", "Users")
ABSOLUTE_PATH = re.compile(
    # A root segment starting a path: not preceded by a name character, a dot, a tilde or a
    # slash, so "https://host/home/x", "./tmp/x" and "docs/home/x" are fine; but "file://"
    # followed by one is a machine path too.
    r"(?:(?<![\w.~/-])|(?<=file://))/(?:" + "|".join(MACHINE_ROOTS) + r")/"
    # Windows home folders.
    r"|\b[A-Za-z]:[\\/]+Users[\\/]"
)
BESIDE_THE_CHECKOUT = ("../" + "shared", "shared" + "/data")


def shipped_files() -> list[str]:
    """Paths, relative to the repository root, of the files git would ship that exist here."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return walked_files()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def walked_files() -> list[str]:
    """Without git (an unpacked archive): every file under the root but build and cache
    folders, so the checks still run rather than skip."""
    skipped = {".git", ".venv", "runs", "build", "dist", "__pycache__", ".pytest_cache"}
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if (
            path.is_file()
            and not skipped & set(relative.parts[:-1])
            and ".egg-info" not in str(relative)
        ):
            found.append(relative.as_posix())
    return sorted(found)


def is_text_kind(name: str) -> bool:
    """Source, configuration, documentation and scripts: where a path would be a real reference."""
    path = ROOT / name
    if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES or path.name == "Makefile":
        return True
    with path.open("rb") as handle:
        first = handle.readline(200)
    return first.startswith(b"#!") and (b"sh" in first.split(b"/")[-1] or b"env" in first)


def lines_of(name: str) -> list[str]:
    return (ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines()


def test_no_shipped_text_file_holds_an_absolute_machine_path():
    """An absolute path under a machine's work, home or temporary folder (or a Windows home
    folder) works on one machine only; use a path relative to the file, ``tmp_path``, or an
    argument. Every occurrence counts, in code, strings, comments and prose alike."""
    found = [
        f"{name}:{number}: {line.strip()}"
        for name in shipped_files()
        if is_text_kind(name)
        for number, line in enumerate(lines_of(name), start=1)
        if ABSOLUTE_PATH.search(line)
    ]
    assert not found, "absolute machine paths:\n" + "\n".join(found)


def test_no_test_and_no_readme_reads_a_folder_beside_the_checkout():
    """A fresh clone has nothing beside it, so no file under ``tests/`` and no ``README.md``
    anywhere may name the folder beside the checkout (``BESIDE_THE_CHECKOUT``: its relative
    path or its data folder), in code or in prose. Tests read the
    fixtures committed under ``tests/fixtures/``; their README states provenance by repository,
    path and commit, and ``build_data_slices.py`` takes its source folder as an argument, so
    neither needs that name either. The one exception is this file, which builds the strings
    it looks for."""
    found = [
        f"{name}:{number}: {line.strip()}"
        for name in shipped_files()
        if name != THIS_FILE and (name.startswith("tests/") or Path(name).name == "README.md")
        for number, line in enumerate(lines_of(name), start=1)
        if any(needle in line for needle in BESIDE_THE_CHECKOUT)
    ]
    assert not found, "references to a folder beside the checkout:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ('DATA = Path("' + "/" + 'work/shared/data")', True),
        ("see " + "/" + "home/alice/notes.md", True),
        ("out = '" + "/" + "tmp/run'", True),
        ("open('file://" + "/" + "Users/bob/x')", True),
        ("C:" + "\\Users\\carol\\data.csv", True),
        ("https://github.com" + "/" + "home/x", False),
        ("./" + "tmp/out and ../" + "work/x", False),
        ("tests/" + "root/x", False),
        ("the root of the tree", False),
    ],
)
def test_the_absolute_path_pattern_flags_machine_paths_and_not_urls(text, flagged):
    assert bool(ABSOLUTE_PATH.search(text)) == flagged
