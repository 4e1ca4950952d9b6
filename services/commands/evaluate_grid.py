"""Where ``deepfactor evaluate``'s tasks run: a local process pool, or a Ray cluster.

Every task is a pure function of what it is handed (the shared inputs and its own small task
record) and runs single-threaded, with its seeds fixed, so the grid's results do not depend on
how many workers there are, which worker took which task, or which executor ran them: the
same data, config and seeds give the same numbers with ``--jobs 1``, ``--jobs 8`` or Ray.
Results come back in the order of the tasks.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

EXECUTORS = ("local", "ray")
TaskFunction = Callable[[Any, Any], Any]

# The shared inputs of the running pool's tasks, set once per worker by the pool's initializer
# (a panel or the models' training data: sent once per worker, not once per task).
_SHARED: Any = None


class Executor(Protocol):
    """Runs ``function(shared, task)`` for each task; yields (index, result) as they finish."""

    def run(
        self, function: TaskFunction, shared: Any, tasks: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with torch and the BLAS pools on one thread, then put them back.

    A matrix product split over two threads can round differently from one on one thread, and
    a backtest's decisions (an optimiser's active set, a stop's threshold) turn such last-bit
    differences into different trades: so every task runs on one thread, wherever it runs
    (a Ray worker starts with one, a spawned process with as many as the machine has cores).
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


# A grid replays dozens of accounts: their services' warnings (every limit that acted, every
# order cut) would bury the command's own lines, and results.json counts them per run anyway.
TASK_LOG_LEVEL = "error"


@contextmanager
def task_logging() -> Iterator[None]:
    """Run the block with the services logging at ``TASK_LOG_LEVEL``; then the caller's set-up
    again (a spawned or Ray worker has none of its own)."""
    import structlog

    from engine.logging import configure_logging

    saved = structlog.get_config()
    configure_logging("evaluate", TASK_LOG_LEVEL)
    try:
        yield
    finally:
        structlog.configure(**saved)


def _call_single_threaded(function: TaskFunction, shared: Any, task: Any) -> Any:
    with single_threaded(), task_logging():
        return function(shared, task)


def _initialise(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _call(function: TaskFunction, task: Any) -> Any:
    return _call_single_threaded(function, _SHARED, task)


class InlineExecutor:
    """``--jobs 1``: the tasks one after the other, in this process."""

    def run(
        self, function: TaskFunction, shared: Any, tasks: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        for index, task in enumerate(tasks):
            yield index, _call_single_threaded(function, shared, task)

    def close(self) -> None:
        pass


class LocalExecutor:
    """A pool of ``jobs`` worker processes, started with ``spawn`` (a forked torch can hang),
    and started again for each batch so that each batch's shared inputs go once per worker."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    def run(
        self, function: TaskFunction, shared: Any, tasks: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        from concurrent.futures import as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.jobs, max(1, len(tasks))),
            mp_context=context,
            initializer=_initialise,
            initargs=(shared,),
        ) as pool:
            futures = {
                pool.submit(_call, function, task): index for index, task in enumerate(tasks)
            }
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        pass


class RayExecutor:
    """The same tasks as Ray remote functions, on the cluster at ``address`` (or a local Ray
    started here with ``jobs`` CPUs when no address is given). The shared inputs go into Ray's
    object store once per batch."""

    def __init__(self, jobs: int, address: str | None) -> None:
        try:
            import ray
        except ImportError as error:
            from engine.errors import UsageError

            raise UsageError(
                "--executor ray needs Ray: pip install 'deepfactor[ray]' (or ray>=2.9)"
            ) from error
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            if address:
                ray.init(address=address, logging_level="warning", log_to_driver=False)
            else:
                ray.init(
                    num_cpus=jobs,
                    include_dashboard=False,
                    logging_level="warning",
                    log_to_driver=False,
                )
        self._remote = ray.remote(num_cpus=1)(_call_single_threaded)

    def run(
        self, function: TaskFunction, shared: Any, tasks: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        shared_ref = ray.put(shared)
        pending = {
            self._remote.remote(function, shared_ref, task): index
            for index, task in enumerate(tasks)
        }
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


def make_executor(kind: str, jobs: int, address: str | None = None) -> Executor:
    """The executor ``--executor``/``--jobs``/``--ray-address`` ask for."""
    if kind == "ray":
        return RayExecutor(jobs, address)
    if kind != "local":
        raise ValueError(f"executor must be one of {EXECUTORS}, received {kind!r}")
    return InlineExecutor() if jobs == 1 else LocalExecutor(jobs)


def run_all(
    executor: Executor,
    function: TaskFunction,
    shared: Any,
    tasks: Sequence[Any],
    on_done: Callable[[int], None] | None = None,
) -> list[Any]:
    """Every task's result, in the order of ``tasks``; ``on_done`` after each one finishes."""
    results: list[Any] = [None] * len(tasks)
    for index, result in executor.run(function, shared, tasks):
        results[index] = result
        if on_done is not None:
            on_done(index)
    return results
