"""Deterministic, resumable sampling of fixed-length windows from a token stream.

An epoch cuts the split's token stream into non-overlapping windows (starting at a seeded
offset, so boundaries move between epochs) and visits them in a seeded random order. Global
batches take consecutive windows of that order and run across epoch ends. Everything is a pure
function of (seed, epoch, position), so the state a checkpoint stores is those three numbers and a
resumed run sees exactly the batches an uninterrupted run would. With several processes each
rank takes its contiguous slice of the same global batch, so 2 ranks together see exactly the
batch that 1 rank sees.
"""
from __future__ import annotations

import numpy as np

from lmscale.errors import DataError


class WindowSampler:
    def __init__(self, dataset, window_len: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.tokens = dataset.tokens
        self.window_len = int(window_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        if self.window_len < 1 or self.batch_size < 1:
            raise DataError(f"window_len and batch_size must be positive (got {window_len}, {batch_size})")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if self.batch_size % self.world_size:
            raise DataError(f"global batch_size={batch_size} is not divisible by world_size={world_size}")
        n = int(self.tokens.shape[0])
        if n < self.window_len:
            raise DataError(f"the split has {n} tokens, fewer than one window of {self.window_len}; "
                            f"use a shorter window or more text")
        self.num_tokens = n
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, int, np.ndarray] | None = None

    # ------------------------------------------------------------------ epoch layout
    def _epoch_layout(self, epoch: int) -> tuple[int, np.ndarray]:
        """(start offset, window order) of an epoch: pure functions of (seed, epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, epoch])
        slack = self.num_tokens - self.window_len * (self.num_tokens // self.window_len)
        offset = int(rng.integers(0, slack + 1)) if slack else 0
        n_windows = (self.num_tokens - offset) // self.window_len
        order = rng.permutation(n_windows)
        self._cache = (epoch, offset, order)
        return offset, order

    def windows_per_epoch(self, epoch: int | None = None) -> int:
        return int(self._epoch_layout(self.epoch if epoch is None else epoch)[1].shape[0])

    def __len__(self) -> int:
        return self.windows_per_epoch(0)

    # ------------------------------------------------------------------ batches
    def _global_starts(self) -> np.ndarray:
        starts = np.empty(self.batch_size, np.int64)
        filled = 0
        while filled < self.batch_size:
            offset, order = self._epoch_layout(self.epoch)
            take = min(self.batch_size - filled, order.shape[0] - self.position)
            starts[filled:filled + take] = offset + order[self.position:self.position + take] * self.window_len
            filled += take
            self.position += take
            if self.position >= order.shape[0]:
                self.epoch += 1
                self.position = 0
        return starts

    def _read(self, starts: np.ndarray) -> np.ndarray:
        idx = starts[:, None] + np.arange(self.window_len, dtype=np.int64)[None, :]
        return np.asarray(self.tokens[idx.ravel()], dtype=np.int64).reshape(len(starts), self.window_len)

    def next_batch(self) -> np.ndarray:
        """This rank's rows of the next global batch: int64 [batch_size // world_size, window_len]."""
        return self.next_batch_with_partners(partners=False)[0]

    def next_batch_with_partners(self, partners: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """This rank's rows and, for each, the next window of the global batch (cyclically): the
        "random other text" of next-sentence pairs, the same whatever the number of ranks.
        Partners are None when not asked for or when the global batch is a single window."""
        starts = self._global_starts()
        per = self.batch_size // self.world_size
        mine = slice(self.rank * per, (self.rank + 1) * per)
        rows = self._read(starts[mine])
        if not partners or self.batch_size == 1:
            return rows, None
        return rows, self._read(np.roll(starts, -1)[mine])

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"sampler state was saved with seed {state['seed']}, this sampler uses {self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position > self.windows_per_epoch(self.epoch):
            raise DataError(f"sampler state position {self.position} is beyond the epoch's "
                            f"{self.windows_per_epoch(self.epoch)} windows (different data or window length?)")


def validation_windows(dataset, window_len: int, n: int) -> np.ndarray:
    """`n` fixed windows spread evenly over the split (all non-overlapping windows when it has fewer).

    No randomness: every evaluation of every run sees the same tokens.
    """
    window_len, n = int(window_len), int(n)
    tokens = dataset.tokens
    available = int(tokens.shape[0]) // window_len
    if available == 0:
        raise DataError(f"the split has {int(tokens.shape[0])} tokens, fewer than one window of {window_len}")
    if n <= 0:
        return np.zeros((0, window_len), np.int64)
    if n >= available:
        idx = np.arange(available, dtype=np.int64)
    else:
        idx = (np.arange(n, dtype=np.int64) * available) // n
    starts = idx * window_len
    pos = starts[:, None] + np.arange(window_len, dtype=np.int64)[None, :]
    return np.asarray(tokens[pos.ravel()], dtype=np.int64).reshape(len(idx), window_len)
