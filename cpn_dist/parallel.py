"""One bounded parallel map for every stage that spreads per-image work over workers (packing, synthetic
data, CAM refinement, affinity labels, evaluation, the CRF of ``cpn segment``, image preparation)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any


def parallel_map(fn: Callable[[Any], Any], items: Iterable, workers: int, *, depth: int | None = None,
                 threads: bool = False, initializer: Callable[[], None] | None = None) -> Iterator:  # fmt: skip
    """``map(fn, items)``, results in the order of ``items``, on ``workers`` processes (``threads``: threads).

    ``workers <= 0`` runs ``fn`` in the calling thread, one item at a time, as it is asked for. Otherwise
    ``items`` is read lazily and at most ``depth`` items (default ``2 × workers``) are in flight: a
    result is waited for before the next item is read. An exception of ``fn`` is raised where its
    result is yielded; then, or when the caller stops early, items not yet started are cancelled and
    the running ones finish before this returns. With processes, ``fn`` and the items are pickled;
    ``initializer`` runs once in each worker process."""
    if workers <= 0:
        yield from map(fn, items)
        return
    depth = max(1, depth if depth is not None else 2 * workers)
    pool: Executor = ThreadPoolExecutor(workers) if threads else ProcessPoolExecutor(workers, initializer=initializer)
    with pool:
        queue: deque = deque()
        try:
            for item in items:
                queue.append(pool.submit(fn, item))
                if len(queue) >= depth:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            for future in queue:
                future.cancel()
