"""Mean-variance portfolio optimisation with turnover cost, built once per shape and re-solved.

The problem, in per-period units:

    maximise    alpha' w - lambda / 2 * w' Sigma w - cost * |w - w_prev|_1
    subject to  lower <= w <= upper                 (per asset: the cap, or 0 where alpha is NaN)
                sum w <= gross                      (long-only; lower = 0, the rest is cash)
                |w|_1 <= gross, net_min <= sum w <= net_max            (long-short)
                |w - w_prev|_1 <= turnover_cap      (when set)

with Sigma = F' F + diag(specific) from the risk model (engine/portfolio/covariance.py:
Ledoit-Wolf, T factor rows and one ridge as every asset's specific variance, or PCA, K
components and a specific variance per asset). Building a cvxpy problem costs far more than
solving it, so one is built per shape (N assets, K factor rows, long-only or not) with every
number that changes as a ``cp.Parameter`` (the problem is DPP), cached, and re-solved with new
values. The factor F is the R of a QR decomposition of the K x N loadings (R' R = L' L) when
K > N, so the risk term is never larger than N x N.

The objective is multiplied by a positive scale that brings the Hessian's diagonal to about 1
(per-period variances are ~1e-4 and alphas ~1e-3, which sit below solver tolerances); the
maximiser is unchanged.

Solver: CLARABEL (interior point, ~10 iterations to 1e-8) with its default ``qdldl``
factorisation, OSQP as the fallback. The factor exposures F w are variables of their own, so
the KKT system holds F as a sparse K x N block and a diagonal quadratic, not the dense N x N
F' F: with ``qdldl`` that takes N = 500 from ~200 ms to ~110 ms a re-solve (``faer``, faster
on the dense form, is slower on this one). Solve time grows with K: measured best of repeated
solves on this project's shared 2-core CPU, T = 120, N = 500: ~115 ms with the Ledoit-Wolf
model (K = 120), ~21 ms with 20 PCA components, ~16 ms with 10; N = 20: ~2-4 ms either way,
most of it cvxpy's own work per solve (the solver ~0.6 ms). Each solve starts cold (no warm
start): the result then depends on the inputs only, not on the solves before it, so a
restarted rebalancer and a replay decide exactly what the original did. OSQP needs eps ~1e-7
to agree with Clarabel to 1e-6 and is then slower at N = 500 (~300 ms with Ledoit-Wolf);
HiGHS failed at N = 500.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import DeepfactorError
from engine.portfolio.covariance import RiskModel

if TYPE_CHECKING:
    import cvxpy as cp

__all__ = [
    "OptimisationError",
    "OptimiserResult",
    "OptimiserSettings",
    "PortfolioOptimiser",
    "load_cvxpy",
]

# An interior-point solve is accurate to about 1e-8; a weight within this of the current one (or
# of 0) is solver noise and comes back as exactly the current weight (or 0). Without the snap, a
# held asset the turnover cost keeps in place is "traded" by a few units of 1e-9 of equity, and
# which way depends on the last bit of the scores: a restarted service would send a different
# dust order than the run it replaces. One millionth of equity is far below any trade worth fees.
_WEIGHT_TOLERANCE = 1e-6
_SOLVERS = ("CLARABEL", "OSQP")
_SOLVER_OPTIONS: dict[str, dict[str, float | int | bool]] = {
    "CLARABEL": {"direct_solve_method": "qdldl"},
    "OSQP": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iter": 200_000, "polishing": True},
}
_CACHE_SIZE = 8


def load_cvxpy() -> ModuleType:
    """Return the cvxpy module, importing it on the first call.

    Not imported with this module: cvxpy, with the scipy it loads (up to 90 MB resident and a
    second), is for the process that solves (the rebalancer), not for every process that
    imports the portfolio package for its lot rules or weighting schemes.
    """
    import cvxpy

    return cvxpy


@dataclass(frozen=True)
class OptimiserSettings:
    """What the optimiser trades off and the limits it keeps (see the module docstring)."""

    risk_aversion: float = 10.0  # lambda in  alpha'w - lambda/2 * w'Sigma w - cost*|w - w_prev|_1
    turnover_cost: float = 0.001  # per unit of one-way traded weight
    turnover_cap: float | None = None  # max sum |w - w_prev| (None: no cap)
    weight_cap: float = 0.2  # max |weight| per asset
    gross: float = 1.0  # max sum |w| (long-only: max sum w; the rest is cash)
    long_only: bool = True
    net_min: float = -1.0  # long-short only: bounds on sum w
    net_max: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not self.risk_aversion >= 0:
            problems.append(f"risk_aversion must be >= 0, received {self.risk_aversion}")
        if not self.turnover_cost >= 0:
            problems.append(f"turnover_cost must be >= 0, received {self.turnover_cost}")
        if self.turnover_cap is not None and not self.turnover_cap >= 0:
            problems.append(f"turnover_cap must be >= 0 or None, received {self.turnover_cap}")
        if not self.weight_cap > 0:
            problems.append(f"weight_cap must be > 0, received {self.weight_cap}")
        if not self.gross > 0:
            problems.append(f"gross must be > 0, received {self.gross}")
        if not self.net_min <= self.net_max:
            problems.append(f"net_min must be <= net_max, received {self.net_min} > {self.net_max}")
        if problems:
            raise ValueError("OptimiserSettings: " + "; ".join(problems))


@dataclass(frozen=True)
class OptimiserResult:
    """The solution: weights (N,), cvxpy's status and the wall time of ``solve`` in ms."""

    weights: np.ndarray
    status: str
    solve_ms: float


class OptimisationError(DeepfactorError):
    """The problem is infeasible or unbounded, or both solvers failed; the message names the
    status, the solver and the numbers that matter."""


@dataclass
class _Template:
    """One cached problem and the parameters that feed it."""

    problem: cp.Problem
    weights: cp.Variable
    alpha: cp.Parameter
    factor: cp.Parameter
    specific_root: cp.Parameter
    cost: cp.Parameter
    previous: cp.Parameter
    lower: cp.Parameter
    upper: cp.Parameter
    turnover_cap: cp.Parameter
    gross: cp.Parameter
    net_min: cp.Parameter | None
    net_max: cp.Parameter | None


def _build(n_assets: int, n_factor_rows: int, long_only: bool) -> _Template:
    cp = load_cvxpy()
    weights = cp.Variable(n_assets, name="weights")
    trades = cp.Variable(n_assets, name="trades")
    alpha = cp.Parameter(n_assets, name="alpha")
    factor = cp.Parameter((n_factor_rows, n_assets), name="factor")
    specific_root = cp.Parameter(n_assets, nonneg=True, name="specific_root")
    cost = cp.Parameter(nonneg=True, name="cost")
    previous = cp.Parameter(n_assets, name="previous")
    lower = cp.Parameter(n_assets, name="lower")
    upper = cp.Parameter(n_assets, name="upper")
    turnover_cap = cp.Parameter(nonneg=True, name="turnover_cap")
    gross = cp.Parameter(nonneg=True, name="gross")
    # `factor` and `specific_root` (the square roots of the specific variances) carry
    # lambda / 2 and the objective's scale, `cost` the scale: a parameter times an expression
    # holding parameters would not be DPP. The specific risk is |sqrt(specific) * w|^2, so
    # the per-asset diagonal stays a parameter (a parameter matrix in a quad_form is not DPP).
    # The factor exposures as variables of their own: the risk term is then a diagonal
    # quadratic and the factor a sparse (K x N) constraint block, instead of the dense N x N
    # matrix factor.T @ factor that the solver would otherwise factorise (5x faster at N=500).
    exposures = cp.Variable(n_factor_rows, name="exposures")
    objective = cp.Maximize(
        alpha @ weights
        - cp.sum_squares(exposures)
        - cp.sum_squares(cp.multiply(specific_root, weights))
        - cost * cp.norm1(trades)
    )
    constraints = [
        exposures == factor @ weights,
        trades == weights - previous,
        weights >= lower,
        weights <= upper,
        cp.norm1(trades) <= turnover_cap,
    ]
    net_min = net_max = None
    if long_only:
        constraints.append(cp.sum(weights) <= gross)
    else:
        net_min = cp.Parameter(name="net_min")
        net_max = cp.Parameter(name="net_max")
        constraints += [
            cp.norm1(weights) <= gross,
            cp.sum(weights) >= net_min,
            cp.sum(weights) <= net_max,
        ]
    problem = cp.Problem(objective, constraints)
    return _Template(
        problem, weights, alpha, factor, specific_root, cost, previous, lower, upper, turnover_cap,
        gross, net_min, net_max,
    )  # fmt: skip


class PortfolioOptimiser:
    """Solve the mean-variance problem of the module docstring, one cached problem per shape.

    Not thread-safe: a solve writes the cached problem's parameters.
    """

    def __init__(self) -> None:
        self._templates: OrderedDict[tuple[int, int, bool], _Template] = OrderedDict()

    def problem(self, n_assets: int, n_factor_rows: int, long_only: bool) -> cp.Problem:
        """The cached cvxpy problem for this shape (built on first use); ``n_factor_rows`` is
        min(K, N) for a risk model with K factor rows (Ledoit-Wolf: K = T, the periods)."""
        return self._template(n_assets, n_factor_rows, long_only).problem

    def _template(self, n_assets: int, n_factor_rows: int, long_only: bool) -> _Template:
        key = (n_assets, n_factor_rows, long_only)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = _build(*key)
            if len(self._templates) > _CACHE_SIZE:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(key)
        return template

    def solve(
        self,
        alpha: np.ndarray,
        risk: RiskModel,
        previous: np.ndarray,
        settings: OptimiserSettings,
    ) -> OptimiserResult:
        """Return the optimal weights for expected per-period returns ``alpha`` (N,; NaN: not
        investable, held at 0), the risk model and the current weights ``previous`` (N,).

        ``previous`` may break the new bounds (a held asset now unscored or over the cap); the
        problem stays feasible unless a turnover cap forbids reaching the bounds. Raises
        ``OptimisationError`` when it is infeasible or both solvers fail.
        """
        started = time.perf_counter()
        alpha = np.asarray(alpha, dtype=np.float64)
        previous = np.asarray(previous, dtype=np.float64)
        n_assets = alpha.shape[0] if alpha.ndim == 1 else -1
        if (
            alpha.ndim != 1
            or previous.shape != alpha.shape
            or risk.loadings.ndim != 2
            or risk.loadings.shape[1] != n_assets
            or np.shape(risk.specific) != (n_assets,)
        ):
            raise ValueError(
                "PortfolioOptimiser.solve: alpha (N,), previous (N,), risk.loadings (K, N) and "
                f"risk.specific (N,) must agree on N, received {alpha.shape}, {previous.shape}, "
                f"{risk.loadings.shape} and {np.shape(risk.specific)}"
            )
        if not np.isfinite(previous).all():
            raise ValueError(
                "PortfolioOptimiser.solve: previous weights must be finite, received NaN or "
                f"inf at {np.flatnonzero(~np.isfinite(previous)).tolist()}"
            )
        investable = np.isfinite(alpha)
        cap = settings.weight_cap
        upper = np.where(investable, cap, 0.0)
        lower = np.zeros(n_assets) if settings.long_only else -upper

        factor = risk.loadings
        if factor.shape[0] > n_assets:
            factor = np.linalg.qr(factor, mode="r")
        template = self._template(n_assets, factor.shape[0], settings.long_only)

        half_lambda = 0.5 * settings.risk_aversion
        specific = np.asarray(risk.specific, dtype=np.float64)
        mean_variance = (np.einsum("ki,ki->", factor, factor) + specific.sum()) / max(n_assets, 1)
        if half_lambda * mean_variance > 0:
            scale = 1.0 / (half_lambda * mean_variance)
        else:  # no risk term: a linear programme, scaled by its largest coefficient
            largest = max(np.abs(alpha[investable]).max(initial=0.0), settings.turnover_cost)
            scale = 1.0 / largest if largest > 0 else 1.0

        template.alpha.value = scale * np.where(investable, alpha, 0.0)
        template.factor.value = np.sqrt(scale * half_lambda) * factor
        template.specific_root.value = np.sqrt(scale * half_lambda * specific)
        template.cost.value = scale * settings.turnover_cost
        template.previous.value = previous
        template.lower.value = lower
        template.upper.value = upper
        # No cap: one that can never bind, |w - w_prev|_1 <= gross + |w_prev|_1.
        no_cap = settings.gross + np.abs(previous).sum() + 1.0
        template.turnover_cap.value = (
            no_cap if settings.turnover_cap is None else settings.turnover_cap
        )
        template.gross.value = settings.gross
        if template.net_min is not None and template.net_max is not None:
            template.net_min.value = settings.net_min
            template.net_max.value = settings.net_max

        status, solver = self._run(template)
        if status != load_cvxpy().OPTIMAL:
            raise OptimisationError(self._failure(status, solver, previous, lower, upper, settings))
        weights = np.clip(np.asarray(template.weights.value, dtype=np.float64), lower, upper)
        unchanged = (np.abs(weights - previous) < _WEIGHT_TOLERANCE) & (
            (previous >= lower) & (previous <= upper)
        )
        weights[unchanged] = previous[unchanged]
        weights[np.abs(weights) < _WEIGHT_TOLERANCE] = 0.0
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return OptimiserResult(weights, status, elapsed_ms)

    @staticmethod
    def _run(template: _Template) -> tuple[str, str]:
        # The first solver that reaches an optimum wins; infeasible and unbounded are facts
        # about the problem, not solver trouble, so they end the search at once.
        cp = load_cvxpy()
        status, solver = "solver_error", _SOLVERS[0]
        for solver in _SOLVERS:
            try:
                template.problem.solve(solver=solver, warm_start=False, **_SOLVER_OPTIONS[solver])
            except Exception:  # cvxpy raises SolverError, Clarabel a bare Exception
                # (a setting its version lacks); either way the next solver gets its turn.
                status = "solver_error"
                continue
            status = template.problem.status
            if status in (cp.OPTIMAL, cp.INFEASIBLE, cp.UNBOUNDED):
                break
        return status, solver

    @staticmethod
    def _failure(
        status: str,
        solver: str,
        previous: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        settings: OptimiserSettings,
    ) -> str:
        # The least turnover that reaching the per-asset bounds takes: what a cap is up against.
        forced = float(
            np.maximum(previous - upper, 0.0).sum() + np.maximum(lower - previous, 0.0).sum()
        )
        if settings.long_only:
            forced = max(forced, float(previous.sum() - settings.gross))
        message = (
            f"portfolio optimisation failed: status {status} from {solver} "
            f"(tried {', '.join(_SOLVERS[: _SOLVERS.index(solver) + 1])}); "
            f"turnover_cap {settings.turnover_cap}, turnover needed just to meet the weight "
            f"bounds {forced:.6g}, weight_cap {settings.weight_cap}, gross {settings.gross}, "
            f"current gross {float(np.abs(previous).sum()):.6g}, "
            f"{int((upper == 0).sum())} of {len(upper)} assets not investable"
        )
        if not settings.long_only:
            message += f", net in [{settings.net_min}, {settings.net_max}]"
        return message
