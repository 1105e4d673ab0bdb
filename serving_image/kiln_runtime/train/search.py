"""Which parameters trial i trains: a pure function of the space, the strategy, the seed and i.

Every trial pod computes its own parameters from the same inputs, so trials need no coordination and
a retried trial trains exactly what the first attempt did. Keys are taken in sorted order because the
apiserver does not keep a map's key order.

grid:   the combinations in lexicographic order of the sorted keys (the last key varies fastest);
        trial i trains combination i.
random: `min(trials, grid size)` distinct combinations drawn without replacement by
        numpy.random.default_rng(seed); trial i trains the i-th drawn.
halving: the candidates are the whole grid when `trials` covers it, else random's draws; successive
        halving (halving.py) decides which of them train on the whole budget.
Either way a run has `min(trials, grid size)` trials; an index past that trains nothing ("Skipped").

A shard (one pod of the trials' Indexed Job) trains every P-th trial: shard s of P takes s, s + P, ...
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .spec import PipelineSpec


def grid_size(space: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in space.values()) if space else 1


def planned_trials(pipeline: PipelineSpec) -> int:
    """How many trials a run trains: what the operator sets as the Job's completions."""
    return min(pipeline.trials, grid_size(pipeline.space))


def _decode(space: dict[str, list[Any]], keys: list[str], combination: int) -> dict[str, Any]:
    out = {}
    for key in reversed(keys):  # mixed-radix digits, last key least significant
        values = space[key]
        combination, digit = divmod(combination, len(values))
        out[key] = values[digit]
    return {k: out[k] for k in keys}


def trial_params(pipeline: PipelineSpec, index: int) -> dict[str, Any] | None:
    """The search-space part of trial `index`'s parameters; None when the index is past the plan."""
    if index < 0:
        raise ValueError(f"trial index must be non-negative, got {index}")
    space = pipeline.space
    keys = sorted(space)
    total = grid_size(space)
    planned = min(pipeline.trials, total)
    if index >= planned:
        return None
    if pipeline.strategy == "grid" or (pipeline.strategy == "halving" and planned == total):
        return _decode(space, keys, index)
    # Spaces beyond int64 (dozens of long lists) cannot be drawn from as one integer range; draw each
    # key independently then (duplicates become possible but are vanishingly rare at that size).
    if total < 2**62:
        draws = np.random.default_rng(pipeline.seed).choice(total, size=planned, replace=False)
        return _decode(space, keys, int(draws[index]))
    rng = np.random.default_rng([pipeline.seed, index])
    return {k: space[k][int(rng.integers(len(space[k])))] for k in keys}


def shard_trials(pipeline: PipelineSpec, shard: int, shards: int) -> range:
    """The trial indexes shard `shard` of `shards` trains."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    return range(shard, planned_trials(pipeline), shards)
