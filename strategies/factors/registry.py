"""The factor registry: what each factor is called, computes, needs, and accepts as parameters.

Two ways in:

- :func:`register_factor` takes a full-history function ``fn(inputs, **params) -> (T, N)``.
  The incremental path runs it on the last ``window`` bars at each new bar.
- :func:`register_kernel` takes a kernel ``fn(data, **params)`` written against
  :class:`~strategies.factors.history.FactorData` (series, lags, window sums). The same code
  then serves the full history and the one-bar updates, which keep only running window state.
  The built-in factors are kernels.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from strategies.factors.history import FactorInputs, FullHistory

FactorFunction = Callable[..., np.ndarray]


@dataclass(frozen=True)
class FactorSpec:
    """A registered factor.

    Attributes
    ----------
    name
        Registry key.
    function
        Full-history function ``fn(inputs: FactorInputs, **params) -> (T, N)``: row t reads
        rows <= t only and is NaN where the history is short or an input it needs is missing.
    defaults
        Parameters and their default values, e.g. ``{"lookback": 252, "skip": 21}``.
    needs_volume
        Whether the factor reads volume (it then refuses inputs without it).
    description
        The first line of the factor's docstring: its one-line definition.
    window_rule
        ``rule(**params) -> bars``; None means the largest parameter + 1.
    minimums
        Smallest value per parameter; unlisted parameters must be >= 1 (``skip`` >= 0).
    check
        ``check(**params) -> message | None`` for rules across parameters.
    kernel
        The :class:`FactorData` kernel of factors registered with :func:`register_kernel`.
    """

    name: str
    function: FactorFunction
    defaults: dict[str, int]
    needs_volume: bool
    description: str
    window_rule: Callable[..., int] | None = field(default=None, repr=False, compare=False)
    minimums: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    check: Callable[..., str | None] | None = field(default=None, repr=False, compare=False)
    kernel: Callable[..., np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The parameter names, in declaration order."""
        return tuple(self.defaults)

    def resolve(self, **params: int) -> dict[str, int]:
        """Return the defaults overlaid with ``params``, validated.

        Raises
        ------
        ValueError
            Naming the factor and the parameter: an unknown parameter, a value that is not an
            integer or is below its minimum, or a rule across parameters that fails.
        """
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"factor {self.name!r}: unknown parameter {unknown[0]!r}; "
                f"its parameters are {list(self.defaults)}"
            )
        resolved = dict(self.defaults)
        for parameter, value in params.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(
                    f"factor {self.name!r}: parameter {parameter!r} must be an "
                    f"integer, received {value!r}"
                )
            resolved[parameter] = int(value)
        for parameter, value in resolved.items():
            minimum = self.minimums.get(parameter, 0 if parameter == "skip" else 1)
            if value < minimum:
                raise ValueError(
                    f"factor {self.name!r}: parameter {parameter!r} must be "
                    f">= {minimum}, received {value}"
                )
        if self.check is not None:
            problem = self.check(**resolved)
            if problem:
                raise ValueError(f"factor {self.name!r}: {problem}")
        return resolved

    def window(self, **params: int) -> int:
        """Bars of history, the decision bar included, the factor reads with ``params``."""
        resolved = self.resolve(**params)
        if self.window_rule is None:
            return max(resolved.values(), default=0) + 1
        return int(self.window_rule(**resolved))

    def require_volume(self, has_volume: bool) -> None:
        """Raise ValueError naming the factor when it needs volume and there is none."""
        if self.needs_volume and not has_volume:
            raise ValueError(f"factor {self.name!r} needs volume, and these inputs have none")


FACTORS: dict[str, FactorSpec] = {}


def _description(function: Callable[..., object]) -> str:
    lines = inspect.getdoc(function)
    return lines.strip().splitlines()[0] if lines else ""


def _add(spec: FactorSpec) -> None:
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError(f"factor name must be a non-empty string, received {spec.name!r}")
    if spec.name in FACTORS:
        raise ValueError(f"factor {spec.name!r} is already registered; pick another name")
    spec.resolve()  # the defaults themselves must be valid
    FACTORS[spec.name] = spec


def _check_signature(
    name: str, function: Callable[..., object], defaults: Mapping[str, int], skip_first: bool
) -> None:
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())[1 if skip_first else 0 :]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters}
    missing = sorted(set(defaults) - accepted)
    if missing:
        raise ValueError(
            f"factor {name!r}: {function.__qualname__} takes no parameter "
            f"{missing[0]!r}; it accepts {sorted(accepted)}"
        )


def register_factor(
    name: str,
    *,
    needs_volume: bool = False,
    history: Callable[..., int] | None = None,
    **defaults: int,
) -> Callable[[FactorFunction], FactorFunction]:
    """Register a full-history factor ``fn(inputs: FactorInputs, **params) -> (T, N)``.

    Parameters
    ----------
    name
        Registry key; a name already taken raises ValueError.
    needs_volume
        Whether ``fn`` reads ``inputs.volume``.
    history
        ``history(**params) -> bars`` read by ``fn`` (decision bar included); by default the
        largest parameter + 1, right for a factor of ``lookback`` returns. The incremental
        path re-runs ``fn`` on that many trailing bars at each new bar, so it must be enough.
    **defaults
        The parameters ``fn`` takes and their default values (integers).

    Returns
    -------
    Callable
        A decorator that registers ``fn`` and returns it unchanged.
    """

    def decorate(function: FactorFunction) -> FactorFunction:
        _check_signature(name, function, defaults, skip_first=True)
        _add(
            FactorSpec(
                name=name,
                function=function,
                defaults=dict(defaults),
                needs_volume=needs_volume,
                description=_description(function),
                window_rule=history,
            )
        )
        return function

    return decorate


def register_kernel(
    name: str,
    *,
    window: Callable[..., int],
    needs_volume: bool = False,
    minimums: Mapping[str, int] | None = None,
    check: Callable[..., str | None] | None = None,
    **defaults: int,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register a factor kernel ``fn(data: FactorData, **params)``, which runs incrementally.

    ``window(**params)`` must give the bars the kernel reads (decision bar included); the
    spec's ``function`` evaluates the kernel over a whole :class:`FactorInputs`.
    """

    def decorate(kernel: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        _check_signature(name, kernel, defaults, skip_first=True)
        holder: list[FactorSpec] = []

        def function(inputs: FactorInputs, **params: int) -> np.ndarray:
            spec = holder[0]
            resolved = spec.resolve(**params)
            spec.require_volume(inputs.volume is not None)
            with np.errstate(all="ignore"):
                return np.asarray(kernel(FullHistory(inputs), **resolved), dtype=np.float64)

        function.__name__ = function.__qualname__ = name
        function.__doc__ = kernel.__doc__
        function.__wrapped__ = kernel  # type: ignore[attr-defined]
        spec = FactorSpec(
            name=name,
            function=function,
            defaults=dict(defaults),
            needs_volume=needs_volume,
            description=_description(kernel),
            window_rule=window,
            minimums=dict(minimums or {}),
            check=check,
            kernel=kernel,
        )
        holder.append(spec)
        _add(spec)
        return kernel

    return decorate
