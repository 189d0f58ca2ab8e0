"""Where a training step's time goes (a diagnosis aid beside bench_train.py, not a benchmark).

Sets up lora-kit's LoraTrainer like bench_train.py does, then times the phases of a step with a device
sync between them (data, forward, backward, optimizer), the same steps without syncs, and prints
torch.profiler's top operators by device and by CPU time for two steps.

  python scripts/profile_train.py --sd15 --resolution 512 --batch 4     # GPU
  python scripts/profile_train.py --sdxl --resolution 1024 --batch 1    # GPU
  python scripts/profile_train.py --resolution 64 --batch 4             # tiny model, CPU
  python scripts/profile_train.py --recipe recipes/demo-subject.toml --set train.batch_size=4   # a recipe as it is
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt  # noqa: E402


def phase_times(t, batches, n: int, start: int) -> dict:
    """Seconds per phase over the next `n` batches of the real batch iterator, with a sync after each phase."""
    dev = t.accelerator.device
    out = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    clock = [0.0]

    def mark(phase: str) -> None:
        bt.sync(dev)
        now = time.perf_counter()
        out[phase] += now - clock[0]
        clock[0] = now

    for k in range(n):
        clock[0] = time.perf_counter()
        batch = next(batches)
        mark("data")
        bt.lora_kit_step(t, batch, start + k, mark)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny-sd15")
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--sdxl", action="store_true")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reference", action="store_true", help="profile bench_train's reference loop instead")
    ap.add_argument("--workdir", help="folder for the random-init model and the run (kept; reused by a second call)")
    ap.add_argument("--recipe", help="profile this recipe's own model, data and settings (--model/--resolution/--batch ignored)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="with --recipe")
    a = ap.parse_args()
    tmp = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="profile-train-"))
    model = a.model
    if a.sd15:
        model = str(bt.sd15_sized_folder(tmp / "sd15-random"))
    if a.sdxl:
        model = str(bt.sdxl_sized_folder(tmp / "sdxl-random"))
    n = a.steps
    if a.reference:
        return profile_reference(model, a.resolution, a.batch, n)
    t0 = time.perf_counter()
    t = bt.recipe_trainer(a.recipe, a.overrides, str(tmp / "run")) if a.recipe else \
        bt.lora_kit_trainer(model, a.resolution, a.batch, 3 + 2 * n + 2, str(tmp / "run"))
    dev = t.accelerator.device
    print(f"setup {time.perf_counter() - t0:.1f} s, setup peak {bt.peak_mb(dev):.0f} MiB, offloaded {len(t.offloaded)}")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gen = bt.endless_batches(t)  # the real iterator: loading batches from the cache is part of every step
    free = bt.time_steps(lambda k: bt.lora_kit_step(t, next(gen), k), 3, n, dev)
    phases = phase_times(t, gen, n, 3 + n)
    total = sum(phases.values()) / n
    label = a.recipe or (model if not (a.sd15 or a.sdxl) else ('SD1.5-sized' if a.sd15 else 'SDXL-sized'))
    label = " ".join([label, *a.overrides])
    print(f"\n{label}, {t.recipe.buckets.resolution} px, batch {t.recipe.train.batch_size}, "
          f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}")
    print(f"step without syncs: {free * 1000:.1f} ms ({t.recipe.train.batch_size / free:.2f} images/s); with syncs: {total * 1000:.1f} ms")
    print("per step: " + ", ".join(f"{k} {v / n * 1000:.1f} ms" for k, v in phases.items()))
    print(f"training peak {bt.peak_mb(dev):.0f} MiB")
    print_profile(lambda k: bt.lora_kit_step(t, next(gen), 3 + 2 * n + k), dev)


def profile_reference(model: str, res: int, batch: int, n: int) -> None:
    step, dev = bt.reference_step_fn(model, res, batch)
    free = bt.time_steps(step, 3, n, dev)
    print(f"\nreference, {res} px, batch {batch}: step {free * 1000:.1f} ms ({batch / free:.2f} images/s), peak {bt.peak_mb(dev):.0f} MiB")
    print_profile(step, dev)


def print_profile(step, dev) -> None:
    """torch.profiler over two steps: top operators by device time, and by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for k in range(2):
            step(k)
        bt.sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    if dev.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
