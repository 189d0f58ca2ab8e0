"""Thread policy (lora_kit.runtime): explicit settings win, else the cores other processes leave free."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_kit.runtime import BusyMeter, choose_threads

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cores, others, processes, want", [
    (2, 0.0, 1, 2),      # idle: every core
    (2, 0.3, 1, 2),
    (2, 1.0, 1, 1),      # one busy process: the other core
    (2, 2.0, 1, 1),      # two busy processes: at least one thread, never the collapsing two
    (2, 9.0, 1, 1),
    (16, 3.4, 2, 6),     # 13 free cores shared by two processes of one run
])
def test_choose_threads(cores, others, processes, want):
    n, why = choose_threads(cores, others, processes)
    assert n == want and why


def test_busy_meter_sees_another_process_and_not_this_one():
    """A CPU-bound child shows as about one busy core; this process' own work does not count."""
    meter = BusyMeter()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(1.0)
        others = meter.others_busy()
    finally:
        child.wait()
    assert others is not None and 0.6 <= others <= 2.2, others  # the child, plus whatever else runs here
    meter = BusyMeter()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:  # busy in this process
        pass
    assert meter.others_busy() < others


def _threads_in_child(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LORA_KIT_THREADS", "LOCAL_WORLD_SIZE")}
    env.update(env_extra)
    code = ("import torch; from lora_kit.runtime import configure_threads; "
            "n, why = configure_threads(); print(n, torch.get_num_threads(), why)")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_explicit_settings_win():
    out = _threads_in_child({"LORA_KIT_THREADS": "3"})
    assert out.stdout.split()[:2] == ["3", "3"], out.stderr
    out = _threads_in_child({"OMP_NUM_THREADS": "2"})
    assert out.stdout.split()[:2] == ["2", "2"], out.stderr


def test_without_a_setting_the_free_cores_are_used():
    out = _threads_in_child({})
    n, torch_n = (int(v) for v in out.stdout.split()[:2])
    assert n == torch_n and 1 <= n <= len(os.sched_getaffinity(0)), out.stdout + out.stderr
    assert "cores free" in out.stdout


def test_bad_thread_setting_is_one_line():
    out = _threads_in_child({"LORA_KIT_THREADS": "many"})
    assert out.returncode != 0 and "LORA_KIT_THREADS='many'" in out.stderr
