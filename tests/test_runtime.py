"""Thread policy (lora_kit.runtime): explicit settings win, tiny models get one thread, else the free cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_kit.runtime import TINY_PARAMS, choose_threads

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cores, load, params, processes, want", [
    (2, 0.0, 10_000_000, 1, 1),      # the tiny world: one thread even on an idle box
    (2, 0.0, None, 1, 2),            # idle: every core
    (2, 0.2, 860_000_000, 1, 2),     # SD1.5-sized, idle
    (2, 2.3, 860_000_000, 1, 1),     # two busy processes: what is left, at least one
    (2, 9.0, None, 1, 1),
    (16, 3.4, None, 2, 6),           # 13 free cores shared by two processes of one run
    (4, 0.0, TINY_PARAMS, 1, 4),     # the tiny rule is strictly below the bound
])
def test_choose_threads(cores, load, params, processes, want):
    n, why = choose_threads(cores, load, params, processes)
    assert n == want and why


def _threads_in_child(env_extra: dict, params: str = "None") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LORA_KIT_THREADS", "LOCAL_WORLD_SIZE")}
    env.update(env_extra)
    code = ("import torch; from lora_kit.runtime import configure_threads; "
            f"n, why = configure_threads({params}); print(n, torch.get_num_threads(), why)")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_explicit_settings_win():
    out = _threads_in_child({"LORA_KIT_THREADS": "3"}, params="5_000_000")
    assert out.stdout.split()[:2] == ["3", "3"], out.stderr
    out = _threads_in_child({"OMP_NUM_THREADS": "2"}, params="5_000_000")
    assert out.stdout.split()[:2] == ["2", "2"], out.stderr


def test_tiny_model_gets_one_thread_without_a_setting():
    out = _threads_in_child({}, params="5_000_000")
    assert out.stdout.split()[:2] == ["1", "1"], out.stderr
    assert "tiny model" in out.stdout


def test_bad_thread_setting_is_one_line():
    out = _threads_in_child({"LORA_KIT_THREADS": "many"})
    assert out.returncode != 0 and "LORA_KIT_THREADS='many'" in out.stderr
