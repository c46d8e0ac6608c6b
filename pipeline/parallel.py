"""Order-preserving parallel map with bounded memory, for the data stages."""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from typing import Callable, Iterable, Iterator


class _Done:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def ordered_map(fn: Callable, items: Iterable[tuple[str, object]], num_proc: int,
                initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[tuple[str, object]]:
    """Apply ``fn`` to the payload of every ``("task", payload)`` item; pass others through.

    Results come back in input order. At most ``2 * num_proc`` tasks are in flight, so a
    producer that reads a huge file never runs ahead of the workers (``Pool.imap`` would
    drain the whole input into its queue).
    """
    if num_proc <= 1:
        if initializer:
            initializer(*initargs)
        for tag, payload in items:
            yield (tag, fn(payload)) if tag == "task" else (tag, payload)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(num_proc, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for tag, payload in items:
            pending.append((tag, pool.apply_async(fn, (payload,)) if tag == "task" else _Done(payload)))
            while sum(t == "task" for t, _ in pending) > 2 * num_proc:
                tag0, res = pending.popleft()
                yield tag0, res.get()
        while pending:
            tag0, res = pending.popleft()
            yield tag0, res.get()
