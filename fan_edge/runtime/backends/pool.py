"""A pool of per-call engine objects, for backends whose run state cannot be shared between threads.

An OpenVINO infer request and a LiteRT interpreter hold their input and
output buffers: two threads inside one would overwrite each other's tensors.
Instead of a lock around a single one (correct, but serialising), a backend
keeps a pool: a call takes an idle instance, or makes one when none is idle,
and gives it back when done. The pool therefore holds at most as many
instances as there were calls in flight at once, whatever the number of
threads that come and go, so memory stays flat after warm-up, and no
instance is ever used by two calls at the same time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class InstancePool(Generic[T]):
    """Idle instances made by ``factory``; ``limit`` caps how many exist (callers beyond it wait)."""

    def __init__(self, factory: Callable[[], T], limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be positive")
        self._factory = factory
        self._idle: list[T] = []
        self._created = 0
        self._limit = limit
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """How many instances exist (idle or in use)."""
        with self._cond:
            return self._created

    def add(self, instance: T) -> None:
        """Hand over an instance made elsewhere (the first one, made while loading, to report errors early)."""
        with self._cond:
            self._created += 1
            self._idle.append(instance)
            self._cond.notify()

    @contextlib.contextmanager
    def take(self) -> Iterator[T]:
        with self._cond:
            while not self._idle and self._limit is not None and self._created >= self._limit:
                self._cond.wait()
            if self._idle:
                instance = self._idle.pop()
            else:
                self._created += 1
                instance = None
        if instance is None:
            try:
                instance = self._factory()
            except BaseException:
                with self._cond:
                    self._created -= 1
                    self._cond.notify()
                raise
        try:
            yield instance
        finally:
            with self._cond:
                self._idle.append(instance)
                self._cond.notify()

    def clear(self) -> None:
        """Drop the idle instances (calls in flight keep theirs until they return them)."""
        with self._cond:
            self._created -= len(self._idle)
            self._idle.clear()
