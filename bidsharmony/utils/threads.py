"""How many threads torch uses, set for a block and restored after it.

``torch.set_num_threads`` is process-wide: a library call that sets it and returns leaves every
later caller with its choice. The harmonizers and the evaluation set it through these helpers.
"""

from __future__ import annotations

import contextlib
import functools


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """Run a block with torch's intra-op threads set to ``num_threads`` (``None``: unchanged)."""
    import torch

    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def with_own_threads(method):
    """Decorate a method to run under ``torch_threads(self.num_threads)``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch_threads(self.num_threads):
            return method(self, *args, **kwargs)

    return wrapper
