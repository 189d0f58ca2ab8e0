"""The training step never waits for the device and moves each kind of per-sample data in one copy.

A `TorchDispatchMode` records every aten op of `LoraTrainer.step` (forward, backward, clip, 8-bit AdamW).
`aten::_local_scalar_dense` is what `.item()`, `float(t)` and `int(t)` dispatch to: on a GPU each one
is a host-device sync. Copies (`_to_copy`, `copy_`) must not grow with the batch: per-sample copies are
per-sample stalls on a GPU. bf16 mixed precision makes the CPU run show them (a dtype change is a copy even
where the device is the same).
"""

from __future__ import annotations

from collections import Counter

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from train_utils import reset_accelerate

from lora_kit.config.load import load_recipe


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


COPIES = ("_to_copy", "copy_")


def _trace_step(tmp_path, batch_size: int) -> Counter:
    from lora_kit.train.recipe import LoraTrainer

    reset_accelerate()
    r = load_recipe("tiny-smoke", [
        f'output_dir="{tmp_path / f"b{batch_size}"}"', f"train.batch_size={batch_size}", "train.max_steps=3",
        'train.mixed_precision="bf16"', "log.tensorboard=false", "save.every_n_steps=0", "dataset.caption_dropout=0.0",
        "loss.min_snr_gamma=5.0", "loss.noise_offset=0.05",
    ])
    t = LoraTrainer(r)
    t.setup()
    batches = t.data.batches(0)
    t.step(next(batches))  # the first step creates the optimizer state
    batch = next(batches)
    assert len(batch["index"]) == batch_size
    with OpRecorder() as rec:
        t.step(batch)
    t.cleanup()
    reset_accelerate()  # bf16 accelerator state must not leak into later in-process runs
    return rec.ops


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    return {b: _trace_step(tmp, b) for b in (2, 4)}


def test_step_reads_nothing_back_from_the_device(traces):
    for b, ops in traces.items():
        assert ops["_local_scalar_dense"] == 0, f"batch {b}: {ops['_local_scalar_dense']} scalar reads in the step"
        assert ops["addmm"] + ops["mm"] + ops["convolution"] > 0  # the trace did see the U-Net


def test_step_copies_do_not_grow_with_the_batch(traces):
    two, four = ({k: traces[b][k] for k in COPIES} for b in (2, 4))
    assert two == four, f"copies at batch 2 {two} vs batch 4 {four}"
    # The per-sample noise is drawn per sample (one generator each) but cast and moved once.
    assert traces[4]["randn"] == 2 * traces[2]["randn"]
