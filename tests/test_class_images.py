"""Class images rendered by the base (dataset.reg_prompt + reg_count): cached, resumable, the base's pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lora_kit.config.load import load_recipe
from lora_kit.errors import UserError
from train_utils import run_training

PROMPT = "a red circle on a white background"


def _reg_pngs(cache) -> list:
    return sorted(p for p in (cache / "class_images").glob("*/*/*.png"))


def test_class_images_are_rendered_once_cached_and_resumed(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORA_KIT_CACHE", str(cache))
    over = [f'dataset.reg_prompt="{PROMPT}"', "dataset.reg_count=3", "train.max_steps=2"]
    t = run_training(tmp_path / "a", over)
    pngs = _reg_pngs(cache)
    assert [p.name for p in pngs] == ["0000.png", "0001.png", "0002.png"]
    subset = pngs[0].parent
    assert subset.name == f"1_{PROMPT}"  # kohya's reg layout: <repeats>_<class>
    assert all((subset / f"{i:04d}.txt").read_text() == PROMPT + "\n" for i in range(3))
    assert t.data.data.stats.num_reg_images == 3
    meta = json.loads((subset.parent / "class_images.json").read_text())
    assert meta["prompt"] == PROMPT and meta["cfg"] == 7.0 and meta["size"] == 64 and len(meta["model"]) == 16
    first = [np.asarray(Image.open(p)) for p in pngs]
    assert not np.array_equal(first[0], first[1])  # one seed per picture
    # A second run renders nothing (same files, untouched); asking for more renders only the new ones.
    stamps = [p.stat().st_mtime_ns for p in pngs]
    run_training(tmp_path / "b", over)
    assert [p.stat().st_mtime_ns for p in _reg_pngs(cache)] == stamps
    (subset / "0001.png").unlink()  # as if a run stopped after picture 0
    t = run_training(tmp_path / "c", over[:1] + ["dataset.reg_count=4", "train.max_steps=2"])
    pngs = _reg_pngs(cache)
    assert [p.name for p in pngs] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert np.array_equal(np.asarray(Image.open(subset / "0001.png")), first[1])  # seeded: the same picture again
    assert pngs[0].stat().st_mtime_ns == stamps[0] and t.data.data.stats.num_reg_images == 4
    # Fewer than the cache holds: this run sees only its first reg_count.
    t = run_training(tmp_path / "d", over[:1] + ["dataset.reg_count=2", "train.max_steps=2"])
    assert t.data.data.stats.num_reg_images == 2


def test_class_image_keys_are_checked():
    base = ["dataset.path=builtin:shapes-star"]
    for bad, msg in ((["dataset.reg_count=5"], "reg_prompt/reg_count"), ([f'dataset.reg_prompt="{PROMPT}"'], "reg_prompt/reg_count"),
                     ([f'dataset.reg_prompt="{PROMPT}"', "dataset.reg_count=5", "dataset.reg_path=builtin:shapes-world"], "not both"),
                     (["dataset.reg_count=-1"], "reg_count")):  # fmt: skip
        with pytest.raises(UserError, match=msg):
            load_recipe("tiny-smoke", base + bad)
