"""The thread policy of the training loops: one intra-op thread by default, restored afterwards.

The networks of this package are small (``mlp(1, 2)`` with 50 hidden units, minibatches of
100): one step is a few hundred microseconds of work, and PyTorch's intra-op thread pool
costs more in synchronisation than it saves. Worse, on a machine whose cores are busy with
another process, every parallel region waits for a descheduled worker: the demo took 106-250 s
with PyTorch's default 2 threads on a loaded 2-core machine, and 9 s with one thread
(``benchmarks/threads.py`` measures it). So :func:`~pyro_mapa.training.fit`,
:func:`~pyro_mapa.training.fit_libi`, ``MethodSetup.train`` and ``pyro-mapa demo`` run with

* ``num_threads=n`` (an int >= 1): ``torch.set_num_threads(n)`` for the duration of the call;
* ``num_threads=None`` (the default): the environment decides if the user set it: when
  ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, PyTorch's current setting is left alone
  (PyTorch read the variable at start-up); otherwise one thread.

The previous ``torch.get_num_threads()`` is restored when the call returns or raises. Big
networks (``experiments/digits.py``-sized and up) can profit from more threads: pass
``num_threads=torch.get_num_threads()`` (leave it as it is) or the number of idle cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import check_positive_int

__all__ = ["THREAD_ENV_VARS", "resolve_num_threads", "torch_threads"]

#: Environment variables that, when set, mean the user chose the thread count themselves.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def resolve_num_threads(num_threads: int | None) -> int | None:
    """The intra-op thread count the policy picks: ``None`` means "leave PyTorch's setting alone".

    Arguments:
        num_threads: An int >= 1, or ``None`` for the default policy (the environment's
            ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` if set, else 1).

    Raises:
        TypeError, ValueError: ``num_threads`` is not ``None`` or an int >= 1.
    """
    if num_threads is not None:
        return check_positive_int(num_threads, "num_threads")
    if any(os.environ.get(name, "").strip() for name in THREAD_ENV_VARS):
        return None
    return 1


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int]:
    """Runs the block with the thread count :func:`resolve_num_threads` picks, then restores the old one.

    Yields:
        The number of intra-op threads in effect inside the block.
    """
    resolved = resolve_num_threads(num_threads)
    previous = torch.get_num_threads()
    if resolved is None or resolved == previous:
        yield previous
        return
    torch.set_num_threads(resolved)
    try:
        yield resolved
    finally:
        torch.set_num_threads(previous)
