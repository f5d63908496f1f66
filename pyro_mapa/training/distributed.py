"""Data-parallel MAPA training with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Each process owns a contiguous shard of the data rows: it builds (or loads) only its rows
of the MAPA table (``PosteriorTable.from_data(X, kernel, rows=shard_rows(...))``), draws
its own minibatches from its shard, and :class:`DistributedSVI` averages the gradients
across processes with an all-reduce before every optimizer step, exactly as
``DistributedDataParallel`` does. With equal per-process batch sizes and
``TraceMAPA_ELBO(rng_seed=...)`` (remainder draws that depend only on the data row and
the step), training equals single-process training on the combined batch, up to
floating-point summation order (``tests/test_distributed.py``).

Launch with ``torchrun`` (see ``examples/train_distributed.py``)::

    torchrun --nproc_per_node=2 examples/train_distributed.py --epochs 20

The core package does not need this module; nothing here is imported by ``pyro_mapa``.
"""

from __future__ import annotations

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import SVI

__all__ = ["DistributedSVI", "shard_batches", "shard_rows"]


def shard_rows(num_rows: int, rank: int, world_size: int) -> range:
    """The contiguous data rows ``[start, stop)`` owned by ``rank``; shards differ in size by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if num_rows < world_size:
        raise ValueError(f"need at least one row per process: {num_rows} rows for {world_size} processes")
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard_batches(rows: range, batch_size: int, epoch: int, seed: int = 0) -> list[torch.Tensor]:
    """Shuffled minibatches of one shard's data rows for one epoch (a pure function of its arguments).

    The same call on every process of a job, and in a single-process reference run that
    concatenates the shards' ``i``-th batches, gives the same combined minibatches.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(rows), generator=g) + rows.start
    return list(perm.split(batch_size))


class DistributedSVI(SVI):
    """``pyro.infer.SVI`` whose ``step`` averages gradients over the default process group.

    Every process computes ``loss_and_grads`` on its own minibatch; the gradients of all
    parameters are all-reduced (mean) before the optimizer update, so every process
    applies the same update and parameters stay identical. The returned loss is the mean
    over processes. Initialize the process group first (``dist.init_process_group``, or
    ``torchrun``), and start every process from the same parameters (same seed).
    """

    def step(self, *args, **kwargs) -> float:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedSVI needs torch.distributed.init_process_group() first")
        world = dist.get_world_size()
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        # A fixed order (by param-store name) so every process all-reduces the same tensors in turn.
        named = dict(pyro.get_param_store().named_parameters())  # unconstrained values
        ordered = [named[name] for name in sorted(named) if named[name] in params]
        for p in ordered:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
        loss_t = torch.tensor(float(loss), dtype=torch.float64)
        dist.all_reduce(loss_t, op=dist.ReduceOp.SUM)
        self.optim(ordered)
        for p in ordered:
            p.grad = None
        return float(loss_t) / world
