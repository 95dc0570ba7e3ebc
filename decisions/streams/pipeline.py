"""One background thread that commits prepared batches while the subscriber prepares the next one.

Storing a batch of decisions and publishing its events is mostly waiting: for PostgreSQL to insert
the rows and for Redis to run the MULTI. Decoding, validating and scoring the next batch is CPU work
in Python. Running the commit of batch k on this thread while the main thread prepares batch k+1
overlaps the two, so on two cores the subscriber's throughput is set by the slower of the two
instead of their sum. At most ``depth`` commits are outstanding: memory stays bounded to a couple
of batches, and an entry is still acknowledged only by the commit that stored it.

The thread keeps its own database connection (Django connections are per thread) and closes it
when a job fails with a transient error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import connection

log = logging.getLogger(__name__)


class CommitPipeline:
    """Runs jobs in order on one thread; :meth:`submit` and :meth:`drain` hand back failures.

    A failure is returned as ``(tag, exception)`` with the tag given at submit, so the caller can
    retry or isolate the batch that failed; jobs keep running in order after a failure.
    """

    def __init__(self, *, depth: int = 1, transient: tuple[type[BaseException], ...] = ()):
        self.depth = depth
        self.transient = transient
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlv3-commit")
        self._outstanding: deque[tuple[Future, Any]] = deque()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except self.transient:
            _close_connection()  # it may be broken: this thread reconnects on its next query
            raise

    def submit(self, job: Callable[[], None], *, tag: Any) -> list[tuple[Any, BaseException]]:
        """Queue ``job`` after waiting until fewer than ``depth`` jobs are outstanding."""
        failures = self._collect(keep=self.depth - 1)
        self._outstanding.append((self._executor.submit(self._run, job), tag))
        return failures

    def drain(self) -> list[tuple[Any, BaseException]]:
        """Wait for every outstanding job; the failures among them."""
        return self._collect(keep=0)

    def _collect(self, *, keep: int) -> list[tuple[Any, BaseException]]:
        failures = []
        while len(self._outstanding) > keep:
            future, tag = self._outstanding.popleft()
            error = future.exception()
            if error is not None:
                failures.append((tag, error))
        return failures

    @property
    def busy(self) -> bool:
        return bool(self._outstanding)

    def close(self) -> list[tuple[Any, BaseException]]:
        """Drain, close the thread's database connection and stop the thread."""
        failures = self.drain()
        self._executor.submit(_close_connection).result()
        self._executor.shutdown(wait=True)
        return failures


def _close_connection() -> None:
    """Close the calling thread's database connection (Django keeps one per thread)."""
    try:
        connection.close()
    except Exception:  # already broken: dropping it is all that matters
        pass
