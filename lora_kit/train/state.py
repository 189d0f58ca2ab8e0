"""What the training loop owns and updates, in one typed record (checkpointed for exact resume)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

# Saved in train_state.json; the rest (losses) is reporting that a resume measures anew.
CHECKPOINTED = ("global_step", "epoch", "batch_in_epoch", "started_at", "total_steps")


@dataclass
class TrainState:
    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of this process already taken from the current epoch
    started_at: float = field(default_factory=time.time)  # wall clock of the run's first start
    total_steps: int = 0  # optimizer steps the run will take
    steps_per_epoch: int = 1
    last_loss: float = math.nan  # mean training loss of the last log interval
    last_val_loss: float | None = None  # held-out loss of the last validation (None: not validated)

    def checkpoint_dict(self) -> dict:
        return {k: getattr(self, k) for k in CHECKPOINTED}

    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint's train_state.json (total_steps stays this run's plan)."""
        self.global_step, self.epoch, self.batch_in_epoch = saved["global_step"], saved["epoch"], saved["batch_in_epoch"]
        self.started_at = saved.get("started_at", self.started_at)

    @property
    def done(self) -> bool:
        return self.global_step >= self.total_steps
