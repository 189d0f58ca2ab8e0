"""`train.compile = "regional"`: the compiled step computes the eager step's loss and update.

The backend is "aot_eager": dynamo captures each transformer/ResNet block and AOTAutograd builds its
forward and backward graphs, as with inductor, but no kernels are generated (inductor on this 2-core CPU
takes minutes for the tiny U-Net; the GPU benchmark runs inductor). Tolerance: 1e-5 relative on the loss
and the trained adapter after two optimizer steps (AdamW, fp32).
"""

from __future__ import annotations

import pytest
import torch

from train_utils import reset_accelerate

from lora_kit.config.load import load_recipe


def _two_steps(tmp_path, compile_: str):
    import torch._dynamo

    from lora_kit.train.recipe import LoraTrainer

    reset_accelerate()
    torch._dynamo.reset()
    r = load_recipe("tiny-smoke", [
        f'output_dir="{tmp_path / compile_}"', "train.max_steps=2", "log.tensorboard=false", "save.every_n_steps=0",
        "dataset.caption_dropout=0.0", "optimizer.name=adamw", f'train.compile="{compile_}"',
        'train.compile_backend="aot_eager"',
    ])
    t = LoraTrainer(r)
    t.setup()
    batches = t.data.batches(0)
    losses = [float(t.step(next(batches))[0]) for _ in range(2)]
    adapter = {n: p.detach().clone() for n, p in t.unet.named_parameters() if p.requires_grad}
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    summary = t.compiled
    t.cleanup()
    return losses, adapter, graphs, summary


def test_regional_compile_matches_eager(tmp_path):
    eager, eager_adapter, _, off = _two_steps(tmp_path, "off")
    compiled, compiled_adapter, graphs, summary = _two_steps(tmp_path, "regional")
    assert off == "off" and summary.startswith("regional (")
    assert graphs > 0  # the blocks really ran compiled
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert eager_adapter.keys() == compiled_adapter.keys() and len(eager_adapter) > 0
    for name, p in eager_adapter.items():
        torch.testing.assert_close(compiled_adapter[name], p, rtol=1e-5, atol=1e-6, msg=name)
