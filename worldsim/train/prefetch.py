"""Batches built ahead of the training step by worker processes (``num_workers``).

Every stage's batch ``i`` is a pure function of ``(run seed, i)``, so workers may build batches
``i + 1, i + 2, ...`` while step ``i`` trains without changing what is trained: a run gives the
same weights with any worker count, and resume stays exact. Workers are forked where the
platform allows it (the encoded data set is shared, not copied) and build batches on the CPU
with one thread each.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

T = TypeVar("T")


class _Steps(Dataset, Generic[T]):
    def __init__(self, make: Callable[[int], T], start: int, stop: int):
        self.make, self.start, self.stop = make, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> T:
        return self.make(self.start + j)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


class Prefetcher(Generic[T]):
    """``batches(step)`` returns ``make(step)``; with workers, built ahead for the steps that follow.
    Asking for a step out of sequence (the first call, a resume) starts the workers there."""

    def __init__(self, make: Callable[[int], T], stop: int, num_workers: int = 0, ahead: int = 4):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.make, self.stop, self.num_workers, self.ahead = make, stop, num_workers, ahead
        self._it: Iterator[T] | None = None
        self._next = -1

    def __call__(self, step: int) -> T:
        if self.num_workers == 0:
            return self.make(step)
        if self._it is None or step != self._next:
            methods = multiprocessing.get_all_start_methods()
            loader = DataLoader(
                _Steps(self.make, step, self.stop),
                batch_size=None,
                num_workers=self.num_workers,
                worker_init_fn=_one_thread,
                prefetch_factor=self.ahead,
                multiprocessing_context="fork" if "fork" in methods else None,
            )
            self._it = iter(loader)
        self._next = step + 1
        return next(self._it)
