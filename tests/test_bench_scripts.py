"""The benchmark scripts run (not timed here: their numbers live in docs/benchmarks.md).

GPU time is lent rarely and briefly, so a script that broke on the CPU must not be found out there.
These run bench_train's two sides and profile_train on the tiny model for a couple of steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_train as bt  # noqa: E402

from tests.train_utils import reset_accelerate  # noqa: E402


def test_bench_train_sides_train_the_same_adapter_and_report(tmp_path):
    step, dev = bt.reference_step_fn("builtin:tiny-sd15", 64, 2)
    step()
    reset_accelerate()
    t = bt.lora_kit_trainer("builtin:tiny-sd15", 64, 2, 2, str(tmp_path / "run"))
    # the comparison is fair: the same LoRA (rank 16 on to_q/k/v/out.0) on the same U-Net
    assert step.trainable_parameters == sum(p.numel() for p in t._trained_params())
    before = [p.detach().clone() for p in t._trained_params()]
    bt.lora_kit_step(t, next(t.data.batches(0)), 0)
    assert any(not (a == b.detach()).all() for a, b in zip(before, t._trained_params()))
    assert t.offloaded == [t.bundle.vae, *t.bundle.text_encoders]  # caches cover the step
    reset_accelerate()
    r = bt.lora_kit_run("builtin:tiny-sd15", 64, 2, steps=1, warmup=1, out=str(tmp_path / "run2"))
    assert r["images_per_s"] > 0 and r["peak_mb"] > 0 and r["offloaded"] == 2 and r["device"] == "cpu"


def test_profile_train_prints_phases_and_profile(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_train.py"), "--steps", "1", "--batch", "2",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "per step: data" in res.stdout and "Self CPU time total" in res.stdout
