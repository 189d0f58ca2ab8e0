"""`train.gradient_checkpointing`: true/false as given, "auto" decided from measured activations and free memory."""

from __future__ import annotations

import pytest
import torch

from train_utils import run_training

from lora_kit.config.load import RecipeError, load_recipe
from lora_kit.train.memory import decide_checkpointing, fits


def test_fits_rule():
    gib = 2**30
    assert fits(1 * gib, 8, 10 * gib)          # 8 GiB of activations in 80 % of 10 GiB
    assert not fits(1 * gib, 9, 10 * gib)      # 9 GiB does not
    assert fits(0.5 * gib, 16, 10 * gib, fraction=0.8)


def test_settings_parse_and_decide_on_cpu(tmp_path):
    for value, want in (("true", True), ("false", False), ('"auto"', False)):
        r = load_recipe("tiny-smoke", [f"train.gradient_checkpointing={value}"])
        on, why = decide_checkpointing(r.train.gradient_checkpointing, None, (8, 8), 2, torch.device("cpu"), torch.float32, None)
        assert on is want and why
    assert "off on the CPU" in why
    with pytest.raises(RecipeError, match=r"gradient_checkpointing: expected true or false or one of 'auto'"):
        load_recipe("tiny-smoke", ['train.gradient_checkpointing="sometimes"'])


def test_auto_trains_and_the_summary_says_why(tmp_path, capsys):
    t = run_training(tmp_path / "run", ['train.gradient_checkpointing="auto"', "train.max_steps=2"])
    assert t.checkpointing == (False, "auto: off on the CPU (system memory; recomputing would only slow the step)")
    assert not t.unet.is_gradient_checkpointing
    assert "grad checkpointing off (auto: off on the CPU" in capsys.readouterr().out
