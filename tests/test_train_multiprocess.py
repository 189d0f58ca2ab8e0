"""`accelerate launch --multi_gpu --num_processes 2` on CPU (DDP over gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ARGS = ["train.max_steps=4", "save.every_n_steps=0", "dataset.caption_dropout=0.0", "log.tensorboard=false", "optimizer.name=adamw"]


def _env(tmp: Path, dump: str) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", LORA_KIT_DUMP_INDICES=str(tmp / dump), HF_HUB_OFFLINE="1")
    return env


PIVOTAL = ["network.train_text_encoder=true", 'dataset.trigger_word="ohwx"', "network.train_trigger_embedding=true",
           "optimizer.text_encoder_lr=1e-2"]


@pytest.mark.parametrize("extra", [[], PIVOTAL], ids=["unet", "pivotal"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, extra):
    """With `pivotal`, the text-encoder LoRA and the trigger's trained rows too (their gradients are all-reduced
    like the LoRA's: the rows are a parameter of the DDP-wrapped text encoder)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lora_kit", "train", "tiny-smoke",
              "--output-dir", str(tmp_path / "two"), *ARGS, *extra]
    two = subprocess.run(launch, env=_env(tmp_path, "idx2"), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "batch 2 x 2 proc x 1 accum = 4" in two.stdout
    assert two.stdout.count("done: 4 steps") == 1  # only the main process reports and writes
    one = subprocess.run([sys.executable, "-m", "lora_kit", "train", "tiny-smoke", "--output-dir", str(tmp_path / "one"),
                          *ARGS, *extra, "train.gradient_accumulation_steps=2"], env=_env(tmp_path, "idx1"), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    r0 = json.loads((tmp_path / "idx2" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "idx2" / "rank1.json").read_text())
    single = json.loads((tmp_path / "idx1" / "rank0.json").read_text())
    assert len(r0) == len(r1) == 8 and not set(r0) & set(r1)  # disjoint shards
    assert sorted(r0 + r1) == sorted(single)  # together: the single process' global batches

    a = load_file(str(tmp_path / "one" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, worst  # measured 3.8e-6 (fp16 file rounding of allreduce vs accumulation order)
    if extra:
        e1, e2 = (load_file(str(tmp_path / r / "embeddings" / "ohwx.safetensors"))["emb_params"] for r in ("one", "two"))
        assert float((e1 - e2).abs().max()) < 1e-5  # unsynced rows would differ by the lr's order (1e-2 per step)


def test_two_process_resume_is_exact(tmp_path):
    """A 2-process run stopped at step 3 and resumed equals the uninterrupted 2-process run bit for bit."""
    base = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lora_kit", "train", "tiny-smoke",
            "train.max_steps=6", "log.tensorboard=false", "save.every_n_steps=0"]
    env = _env(tmp_path, "idx")
    runs = [[*base, "--output-dir", str(tmp_path / "full")],
            [*base, "--output-dir", str(tmp_path / "part"), "--stop-after", "3"],
            [*base, "--output-dir", str(tmp_path / "part"), "--resume", "latest"]]
    for cmd in runs:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from checkpoint-000003: step 3" in res.stdout
    a = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "part" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_two_processes_render_caption_priors_once_and_train_on_them(tmp_path):
    """reg_from_captions under DDP: the main process renders, the other waits; both train on the same view,
    towards the base model's prediction (its forward on the modules inside the DDP wrappers; with reg_balance
    both steps hold a prior row, checked once by printing the rows base_targets replaced)."""
    env = _env(tmp_path, "idx")
    env["LORA_KIT_CACHE"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lora_kit", "train", "tiny-smoke",
           "--output-dir", str(tmp_path / "run"), *ARGS, 'dataset.trigger_word="ohwx"', "dataset.reg_from_captions=1",
           "train.max_steps=2", 'loss.prior_target="base"', "network.train_text_encoder=true", "dataset.reg_balance=true"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    pictures = sorted((tmp_path / "cache" / "class_images" / "captions").glob("*.png"))
    views = [v for v in (tmp_path / "cache" / "class_images" / "views").iterdir()]
    assert pictures and len(views) == 1 and not views[0].name.startswith(".tmp")  # one view, no leftover temp folder
    assert res.stderr.count("caption priors:   0%") == 1  # one progress bar: rendered by one process
    r0 = json.loads((tmp_path / "idx" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "idx" / "rank1.json").read_text())
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)  # 2 steps x batch 2 each, disjoint shards of one set
    assert "reg x1 towards the base model" in res.stdout
