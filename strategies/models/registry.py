"""The model registry: checkpoints on disk and which one is active per strategy.

Layout, under the registry directory (``RUN_DIR/models`` by default)::

    {strategy}/{version}/model.pt     the model's tensors (torch.save of a dict of tensors)
    {strategy}/{version}/meta.json    what it is: kind, factors in order, feature names,
                                      lookback, normalisation statistics, settings, training
                                      span, data hash, metrics, library versions, git commit
    {strategy}/active                 the active version's name (replaced atomically)

Loading refuses a checkpoint whose factors are not the live factor set (names and order).
Tensors are loaded with ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from strategies.models.base import ModelError
from strategies.models.dataset import Normaliser, check_factors
from strategies.models.features import feature_names

META_FILE = "meta.json"
WEIGHTS_FILE = "model.pt"
ACTIVE_FILE = "active"


def _library_versions() -> dict[str, str]:
    import torch  # see ``ModelRegistry.load``

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for package in ("deepfactor", "scikit-learn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class ModelRegistry:
    """Checkpoints of one registry directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self, strategy: str) -> list[str]:
        folder = self.root / strategy
        if not folder.is_dir():
            return []
        # A ".{name}.partial" folder is a save that never finished: never a version.
        return sorted(
            p.name
            for p in folder.iterdir()
            if not p.name.startswith(".") and (p / META_FILE).is_file()
        )

    def save(
        self,
        strategy: str,
        model: Any,
        *,
        training: dict[str, Any],
        metrics: dict[str, Any],
        period: dict[str, Any] | None = None,
        activate: bool = False,
        now: datetime | None = None,
    ) -> str:
        """Write ``model``'s checkpoint and return its version (``{kind}-{UTC time}``); with
        ``activate`` it also becomes the active one. The folder appears complete or not at
        all (written under a temporary name, then renamed)."""
        import torch  # see ``load``

        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{model.kind}-{stamp}"
        target = self.root / strategy / name
        partial = self.root / strategy / f".{name}.partial"
        partial.mkdir(parents=True, exist_ok=False)
        normaliser = getattr(model, "normaliser", None)
        meta = {
            "version": name,
            "kind": model.kind,
            "strategy": strategy,
            "factors": list(model.factors),
            "features": list(feature_names(model.factors)),
            "lookback": model.lookback,
            "settings": model.describe(),
            "normalisation": None
            if normaliser is None
            else {"mean": normaliser.mean.tolist(), "std": normaliser.std.tolist()},
            "training": training,
            "metrics": metrics,
            "period": period or {},
            "created": (now or datetime.now(UTC)).isoformat(),
            "versions": _library_versions(),
            "git_commit": _git_commit(),
        }
        torch.save(model.tensors(), partial / WEIGHTS_FILE)
        (partial / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(partial, target)
        if activate:
            self.activate(strategy, name)
        return name

    def activate(self, strategy: str, name: str) -> None:
        """Make ``name`` the active version of ``strategy``."""
        if not (self.root / strategy / name / META_FILE).is_file():
            raise ModelError(f"no checkpoint {name} of strategy {strategy} in {self.root}")
        _write_atomically(self.root / strategy / ACTIVE_FILE, name + "\n")

    def active(self, strategy: str) -> str | None:
        """The active version of ``strategy``, or None."""
        try:
            return (self.root / strategy / ACTIVE_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def meta(self, strategy: str, name: str) -> dict[str, Any]:
        path = self.root / strategy / name / META_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"no checkpoint {name} of strategy {strategy} ({path})") from None
        except ValueError as error:
            raise ModelError(f"{path} is unreadable ({error})") from None

    def load(
        self,
        strategy: str,
        name: str | None = None,
        *,
        factors: tuple[str, ...] | None = None,
        device: str = "cpu",
    ):
        """Load version ``name`` (default: the active one) of ``strategy``.

        Raises
        ------
        ModelError
            No such checkpoint, no active one, an unreadable one, or factors that are not
            ``factors`` (the live factor set).
        """
        name = name or self.active(strategy)
        if name is None:
            raise ModelError(f"no active model of strategy {strategy} in {self.root}")
        meta = self.meta(strategy, name)
        where = f"model {name} ({self.root / strategy / name})"
        trained_on = tuple(meta["factors"])
        if factors is not None:
            check_factors(trained_on, factors, where)
        # Imported here, not with the module: torch (about 200 MB resident and a second) loads
        # only in a process that saves or serves a checkpoint, not in every one that builds
        # the signal service.
        import torch

        from strategies.models.models import build_model, resolve_device

        try:
            tensors = torch.load(
                self.root / strategy / name / WEIGHTS_FILE, map_location="cpu", weights_only=True
            )
        except Exception as error:  # a damaged file fails in many ways (pickle, EOF, keys)
            raise ModelError(
                f"{where}: weights unreadable ({type(error).__name__}: {error})"
            ) from None
        stats = meta.get("normalisation")
        normaliser = (
            None if stats is None else Normaliser(np.array(stats["mean"]), np.array(stats["std"]))
        )
        try:
            return build_model(
                meta["kind"],
                trained_on,
                int(meta["lookback"]),
                meta.get("settings", {}),
                tensors,
                normaliser,
                resolve_device(device),
                name,
            )
        except (KeyError, RuntimeError) as error:
            raise ModelError(f"{where}: does not match its kind {meta['kind']} ({error})") from None
