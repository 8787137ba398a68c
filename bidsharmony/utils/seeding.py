"""One ``--random-seed`` for every random number generator a run touches."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and make ANTs/ITK use ``seed``.

    ANTs reads ``ANTS_RANDOM_SEED`` in every process it runs in, so setting it here also
    reaches Nipype's worker processes, which inherit the environment.
    """
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    # ANTs reads 0 as "seed from the clock"; the interfaces use seed + 1 the same way.
    os.environ["ANTS_RANDOM_SEED"] = str(seed + 1)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but keep the CLI light
        return
    torch.manual_seed(seed)
