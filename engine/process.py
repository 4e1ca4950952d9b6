"""Child processes that die with their parent: a private redis-server, a supervised service."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> tuple[Callable[[], None] | None, str]:
    """Return a ``preexec_fn`` that ties the child to this process's life, and why not if None.

    The child gets SIGTERM when its parent dies, however it dies (SIGKILL included), so it
    stops cleanly instead of running on as an orphan nobody supervises.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process.
    So it is only set when forking from the main thread, which lives as long as the process
    (CPython's main thread waits for the others at exit).
    """
    if not sys.platform.startswith("linux"):
        return None, f"no PR_SET_PDEATHSIG on {sys.platform}"
    if threading.current_thread() is not threading.main_thread():
        return None, "started from a thread other than the main thread"
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as error:
        return None, f"prctl unavailable: {error}"
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no logging, no locks
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os._exit(1)

    return preexec, ""
