"""Helper processes a scan forks (the walk, the senders): started safely, and never back in our code.

A child runs one function and leaves with ``os._exit``: it never returns into the caller's stack,
runs no exit handlers and flushes no buffers of the parent. SIGINT is held back from the fork until
the child is inside that function, so a Ctrl-C at that moment cannot make it run the parent's code.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable


def can_fork() -> bool:
    """Whether forking is safe here: a ``fork`` exists and no other thread runs (whose locks a child
    would inherit, held)."""
    return hasattr(os, "fork") and threading.active_count() == 1


def fork_child(run: Callable[[], int]) -> int:
    """Fork; the child runs ``run`` and exits with the code it returns (1 if it raises). The pid."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return pid
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        code = run()
    finally:
        os._exit(code)


def exit_reason(status: int) -> str:
    """A child's wait status in words."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
