"""The benchmark scripts run (not timed here: their numbers live in docs/benchmarks.md).

GPU time is lent rarely and briefly, so a script that broke on the CPU must not be found out there.
These run bench_train's two sides and profile_train on the tiny model for a couple of steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_train as bt  # noqa: E402

from tests.train_utils import reset_accelerate  # noqa: E402


def test_bench_train_loops_train_the_same_adapter(tmp_path):
    step, dev = bt.reference_step_fn("builtin:tiny-sd15", 64, 2)
    step()
    reset_accelerate()
    t = bt.lora_kit_trainer("builtin:tiny-sd15", 64, 2, 2, str(tmp_path / "run"))
    # the comparison is fair: the same LoRA (rank 16 on to_q/k/v/out.0) on the same U-Net
    assert step.trainable_parameters == sum(p.numel() for p in t._trained_params())
    _, _, bare_params = bt.bare_loop("builtin:tiny-sd15", 64, [2])
    assert bare_params == step.trainable_parameters
    before = [p.detach().clone() for p in t._trained_params()]
    bt.lora_kit_step(t, next(t.data.batches(0)), 0)
    assert any(not (a == b.detach()).all() for a, b in zip(before, t._trained_params()))
    assert t.offloaded == [t.bundle.vae, *t.bundle.text_encoders]  # caches cover the step


def test_bench_train_runs_every_loop_and_prints_one_table(tmp_path):
    """The whole matrix on the tiny model, as bench_gpu.sh runs it on a GPU (there with inductor)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--batches", "2", "--steps", "1",
                          "--warmup", "1", "--workdir", str(tmp_path), "--set", 'train.compile_backend="aot_eager"'],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULTS "))[8:])
    assert [r["loop"] for r in rows] == list(bt.LOOPS)
    assert all(r["images_per_s"] > 0 and r["peak_mb"] > 0 for r in rows), res.stderr[-3000:]
    by = {r["loop"]: r for r in rows}
    assert by["default"]["flops"] > 0 and by["bare"]["ops"] > 0 and by["default"]["ops"] > 0
    assert by["fast"]["warmup_extra_s"] > 0  # the compiled loop's first step compiled
    ratios = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RATIOS "))[7:])
    assert {"fast/floor images/s @2", "default/bare aten ops @2", "fast/reference images/s @2"} <= set(ratios)
    assert "| loop | batch | images/s |" in res.stdout


def test_profile_train_prints_phases_and_profile(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_train.py"), "--steps", "1", "--batch", "2",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "per step: data" in res.stdout and "Self CPU time total" in res.stdout


def test_eval_world_scorer_prints_a_row_per_setting():
    import eval_world_scorer as ews

    out = ews.rows(n=14, seed=3)
    settings = sum(len(d) for _, _, d in ews.SETTINGS.values())
    assert len(out) == 2 + settings and out[2].startswith("| demo world, ground truth | ")
    rates = [float(v) for line in out[2:] for v in line.strip("| ").split(" | ")[1:]]
    assert len(rates) == settings * 7 and all(0.0 <= r <= 1.0 for r in rates)
    assert out[2].endswith("| 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |")  # ground truth, 14 scenes


def test_profile_train_runs_a_shipped_recipe_as_it_is(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_train.py"), "--steps", "1", "--workdir", str(tmp_path),
                          "--recipe", str(ROOT / "recipes" / "demo-subject.toml"), "--set", "train.batch_size=2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    header = next(line for line in res.stdout.splitlines() if "demo-subject.toml" in line)
    assert "train.batch_size=2, 64 px, batch 2, cpu" in header  # the recipe's resolution, the override's batch
    assert "per step: data" in res.stdout and "Self CPU time total" in res.stdout


def test_bench_concepts_plain_distance_reads_prompts_without_the_trigger_at_weight_1():
    import bench_concepts as bc

    def cell(prompt, weight, dist):
        return {"params": {"prompt": prompt, "loras": [{"weight": weight}]}, "metrics": {"base_distance": dist}}

    cells = [cell("a red zyk square", 1.0, 0.5), cell("a red square", 1.0, 0.02), cell("a blue circle", 1.0, 0.04),
             cell("a blue circle", 0.5, 0.3), cell("a blue circle", 0.0, 0.0), cell("a zyk circle", 0.0, 0.0)]
    assert bc.plain_distance(cells, "zyk") == 0.03
    assert bc.plain_distance(cells[:1], "zyk") is None
