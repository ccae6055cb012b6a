"""One world, whatever builds it: the torch state a world build fixes for itself and gives back afterwards.

CPU kernels split their sums by thread, so the same recipe trained with one or with two torch threads gives
other weights (the losses part in the fifth decimal within 60 steps and the models drift apart from there).
A world model must not depend on who builds it (`make test`'s one-thread workers, `make demo`, the CLI), so each
builder runs inside ``reproducible_build(recipe.threads, recipe.seed)``: the thread count is part of the recipe,
recorded in recipe.json and in the cache key.

Fixed for the build, and the caller's own restored after it (also when the build fails): torch's intra-op thread
count, deterministic algorithms, the default dtype, and the global random state of torch, Python and NumPy
(seeded from the recipe, so a draw from a global generator is part of the recipe too). Not touched: torch's
inter-op thread count (it can be set only once per process, before any parallel work, and eager training on the
CPU does not use that pool), the flush-denormal mode (torch cannot read it back to restore it; off unless a caller
turns it on) and the CPU's instruction set (the remaining difference between machines, see docs/world.md).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def reproducible_build(threads: int, seed: int) -> Iterator[None]:
    """Run a world build with ``threads`` torch threads (a recipe's, checked positive there), deterministic
    algorithms, float32 and seeded global RNGs."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_dtype = torch.get_default_dtype()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):  # torch's CPU generator comes back as it was
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(True)
            torch.set_default_dtype(torch.float32)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.set_default_dtype(previous_dtype)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
