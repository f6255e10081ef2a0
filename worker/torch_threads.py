"""Torch's threads in a worker: one intra-op thread in every thread that runs a model.

A worker runs as many requests at once as its inference pool has threads, one
torch thread each, so the pool never oversubscribes the cores the worker was
given. Setting that once in the main thread is not enough: torch's CPU kernels
and MKL take their thread count from OpenMP, whose setting belongs to the
thread that made it, and a thread started later begins from OpenMP's default,
the cores the process could use when torch was loaded (before ``--cpus``
pinned it). So each pool thread that runs models sets it again as it starts
(``one_torch_thread``, a ``ThreadPoolExecutor`` initializer).

Measured (docs/benchmarks.md, throughput): without it, every worker of
``affinity up`` on two cores ran each matrix-vector product on two OpenMP
threads sharing its one pinned core, spinning at each barrier; with it, the
twelve-MLP cluster served 10-25% more requests a second.
"""

from __future__ import annotations


def configure_process() -> None:
    """The process's own setting (its main thread, and the inter-op pool)."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def one_torch_thread() -> None:
    """Run in each pool thread as it starts: its forward passes use this thread alone."""
    import torch

    torch.set_num_threads(1)
