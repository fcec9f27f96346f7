"""How many threads pylstm's kernel may use.

This limits only pylstm's own worker threads (one time step or one matrix
product split across cores); it does not touch NumPy's or SciPy's BLAS.
Results are bitwise identical at any setting. The setting is process-wide.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from . import _kernel


def set_num_threads(n: int) -> None:
    """Let pylstm split one step or product across up to ``n`` threads.

    Parameters
    ----------
    n : int
        At least 1. Small steps run on one thread whatever the setting, since
        waking a thread would cost more than it saves.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be an int >= 1, got {n!r}")
    _kernel.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads pylstm may use (see :func:`set_num_threads`)."""
    return _kernel.get_num_threads()


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Context manager: ``with pylstm.threads(2): ...`` sets the thread count, then restores it."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


def _init_from_environment() -> None:
    """PYLSTM_NUM_THREADS sets the initial count (default 1)."""
    value = os.environ.get("PYLSTM_NUM_THREADS")
    if value:
        try:
            set_num_threads(int(value))
        except ValueError:
            raise ValueError(f"PYLSTM_NUM_THREADS must be an int >= 1, got {value!r}") from None
