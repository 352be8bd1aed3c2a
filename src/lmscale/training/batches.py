"""Host-side batches: each optimizer step's micro-batches, and the validation set's.

Every example's random draws (masking, span noise, sentence pairs) are keyed by the seed, the
step and the example's index in the global batch (`example_rngs`), so the inputs do not depend
on the micro-batch size or on the number of processes, and a resumed run rebuilds the same ones.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from lmscale.data.objectives import Objective, example_rngs
from lmscale.data.sampler import WindowSampler

Batch = dict[str, Any]


class StepBatches:
    """This process's micro-batches of each optimizer step, with their target counts.

    `prefetch(step)` builds a step's inputs ahead, while the device still runs the current one;
    `take(step)` hands them out (or builds them when none were made ahead). A batch built ahead is
    not consumed yet: `sampler_state()` is the position before it, which is what a checkpoint
    keeps, so a resumed run builds it again.
    """

    def __init__(self, sampler: WindowSampler, objective: Objective, seed: int, micro: int, accum: int,
                 rank: int, pin_memory: bool) -> None:
        self.sampler = sampler
        self.objective = objective
        self.seed = seed
        self.micro = micro
        self.accum = accum
        self.rank = rank
        self.pin_memory = pin_memory
        # (step, micro-batches, target counts, sampler state before they were drawn)
        self._ahead: Optional[tuple[int, list[Batch], list[int], dict]] = None

    def take(self, step: int) -> tuple[list[Batch], list[int]]:
        if self._ahead is not None and self._ahead[0] == step:
            batches, counts = self._ahead[1], self._ahead[2]
        else:
            batches, counts = self._build(step)
        self._ahead = None
        return batches, counts

    def prefetch(self, step: int) -> None:
        before = self.sampler.state_dict()
        batches, counts = self._build(step)
        self._ahead = (step, batches, counts, before)

    def sampler_state(self) -> dict:
        return self._ahead[3] if self._ahead is not None else self.sampler.state_dict()

    def load_sampler_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._ahead = None

    def _build(self, step: int) -> tuple[list[Batch], list[int]]:
        rows, partners = self.sampler.next_batch_with_partners(partners=self.objective.uses_partners)
        first = self.rank * self.micro * self.accum  # this process's first example in the global batch
        batches, counts = [], []
        for i in range(self.accum):
            part = slice(i * self.micro, (i + 1) * self.micro)
            rngs = (example_rngs(self.seed, step, first + part.start, self.micro)
                    if self.objective.uses_example_rngs else ())
            b = self.objective.build(rows[part], rngs, None if partners is None else partners[part])
            counts.append(self.objective.count_targets(b))
            batches.append(_pinned(b) if self.pin_memory else b)
        return batches, counts


def validation_batches(objective: Objective, windows: np.ndarray, seed: int, micro: int, rank: int,
                       world_size: int) -> list[tuple[Batch, int]]:
    """This process's share of the validation windows as batches of `micro`, with their target
    counts. The draws are keyed by window index, so every evaluation sees the same inputs."""
    partners = np.roll(windows, -1, axis=0) if objective.uses_partners and len(windows) > 1 else None
    share = len(windows) // world_size
    mine = range(rank * share, (rank + 1) * share)
    out = []
    for i in range(mine.start, mine.stop, micro):
        part = slice(i, min(i + micro, mine.stop))
        rngs = example_rngs(seed, 0, i, part.stop - i, stream=1) if objective.uses_example_rngs else ()
        b = objective.build(windows[part], rngs, None if partners is None else partners[part])
        out.append((b, objective.count_targets(b)))
    return out


def to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _pinned(batch: Batch) -> Batch:
    """Page-locked copies for a CUDA device: only from those is the copy to the device
    asynchronous (from pageable memory it first waits for the device to go idle)."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
