"""A batch sampler whose every batch comes from one aspect bucket: seeded, sharded, resumable mid-epoch.

Why not an existing one: torch's DistributedSampler knows nothing of buckets, and the bucket samplers of
SimpleTuner/diffusers' DiT scripts drop buckets smaller than a batch (SimpleTuner PR #879) or are not
resumable. Plan for one epoch (identical on every process, it depends only on seed and epoch):

1. each bucket's indices are shuffled and cut into batches of `batch_size`; the last batch of a bucket
   may be short — no image is ever dropped;
2. the batch order is shuffled across buckets;
3. with several processes the plan is padded to a multiple of `num_replicas` batches by repeating its
   first batches (each one repeats samples of a single bucket), because DDP needs every rank to run the
   same number of steps; rank r then takes batches r, r + R, r + 2R, ... With no padding needed, the
   ranks together cover every sample exactly once per epoch; with padding, the samples of the (at most
   R - 1) repeated batches are seen twice in that epoch.

Resume: `state_dict()` holds the epoch and how many batches this rank has consumed; after
`load_state_dict`, iteration continues with exactly the batches that were still to come.
"""

from __future__ import annotations

import random
from typing import Iterator, Optional, Sequence

from lora_kit.errors import UserError


class BucketBatchSampler:
    def __init__(self, buckets_of: Sequence[int], batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if not buckets_of:
            raise ValueError("the dataset is empty")
        self.buckets_of = list(buckets_of)
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out on this rank
        groups: dict[int, list[int]] = {}
        for index, bucket in enumerate(self.buckets_of):
            groups.setdefault(bucket, []).append(index)
        self._groups = dict(sorted(groups.items()))
        total = sum(-(-len(v) // batch_size) for v in self._groups.values())
        self.num_batches_total = total  # before padding
        self.num_padding_batches = (-total) % num_replicas

    # -------------------------------------------------------------------------------------------- plan

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch` for all ranks, padded to a multiple of num_replicas."""
        rng = random.Random(f"buckets:{self.seed}:{epoch}")
        batches = []
        for indices in self._groups.values():
            order = list(indices)
            rng.shuffle(order)
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng.shuffle(batches)
        # Padding repeats whole batches of the plan (one bucket each); only when R does not divide it.
        for i in range(self.num_padding_batches):
            batches.append(list(batches[i % len(batches)]))
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        return self.epoch_plan(epoch)[self.rank::self.num_replicas]

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return (self.num_batches_total + self.num_padding_batches) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        # A finished epoch moves on, so a state saved now resumes at the start of the next one.
        self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; switching to another epoch restarts at its first batch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    # -------------------------------------------------------------------------------------------- state

    def _fingerprint(self) -> dict:
        return {
            "num_samples": len(self.buckets_of),
            "num_buckets": len(self._groups),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
        }

    def state_dict(self, consumed: Optional[int] = None) -> dict:
        """Epoch and position. A DataLoader with workers prefetches batches ahead of the training step,
        so pass `consumed` (the steps actually trained this epoch) when num_workers > 0."""
        position = self.position if consumed is None else consumed
        return {"epoch": self.epoch, "position": position, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._fingerprint()
        changed = [k for k, v in mine.items() if state.get(k, v) != v]
        if changed:
            detail = ", ".join(f"{k} {state[k]} -> {mine[k]}" for k in changed)
            raise UserError(f"cannot resume the data order: the dataset or batch setup changed ({detail})")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
