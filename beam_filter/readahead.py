"""Read the next file while the current one is being worked on.

``finalize`` and the report fold decision files one at a time (memory bounded by one
file). Parquet decoding runs in Arrow's C++ code without the GIL, so a single helper
thread decoding file i+1 while Python folds file i overlaps the two on a second core:
at most two files are held at once, results come back in input order, and a read
error surfaces at the file it belongs to, exactly as a plain loop would raise it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(items: Iterable[T], read: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for each item in order, ``read`` of the next one running meanwhile."""
    items = list(items)
    if len(items) < 2:
        for item in items:
            yield item, read(item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read_ahead") as pool:
        pending = pool.submit(read, items[0])
        for i, item in enumerate(items):
            result = pending.result()
            if i + 1 < len(items):
                pending = pool.submit(read, items[i + 1])
            yield item, result
