"""How many CPU threads torch uses, so that a busy machine slows a run down in proportion, not 50x.

torch starts one intra-op (OpenMP) thread per core, and the threads of an op meet at a barrier before the
next op starts. When other processes hold some of the cores, the barrier waits for a thread that is not
scheduled: `lora-kit demo` took 0.25 s per step on an idle 2-core box and 12-15 s with three other
single-threaded processes running (docs/benchmarks.md has the measured rows). One thread per core that is
actually free avoids that, and tiny models (the embedded world, tests) gain little from a second thread in
the first place: their ops are too small to split.

Rules, in order: an explicit setting wins (`OMP_NUM_THREADS`, or `LORA_KIT_THREADS`); a model under
`TINY_PARAMS` parameters gets one thread; otherwise the cores not busy right now (the cores this process
may use minus the 1-minute load average, at least one). torch has no API for this policy; it only takes a
number (`torch.set_num_threads`).
"""

from __future__ import annotations

import os

TINY_PARAMS = 100_000_000  # the tiny world's U-Net has ~10 M parameters; SD1.5's 860 M


def choose_threads(cores: int, load: float, num_params: int | None, processes: int = 1) -> tuple[int, str]:
    """(threads, why) for `cores` usable cores under a 1-minute load average `load`, shared by `processes`
    processes of this run on the machine (pure; see the module doc)."""
    if num_params is not None and num_params < TINY_PARAMS:
        return 1, f"tiny model ({num_params / 1e6:.0f} M parameters)"
    free = max(1, min(cores, round(cores - load)))
    share = max(1, free // max(1, processes))
    return share, f"{free} of {cores} cores free (load {load:.1f})" + (f", {processes} processes" if processes > 1 else "")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(num_params: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op thread count by the rules above; returns (threads, why) for the run summary."""
    import torch

    explicit = os.environ.get("LORA_KIT_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if explicit:
        name = "LORA_KIT_THREADS" if os.environ.get("LORA_KIT_THREADS") else "OMP_NUM_THREADS"
        try:
            n = max(1, int(explicit))
        except ValueError:
            from lora_kit.errors import UserError

            raise UserError(f"{name}={explicit!r}: expected a whole number of threads") from None
        torch.set_num_threads(n)
        return n, f"{name}={explicit}"
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by `accelerate launch` / torchrun
    n, why = choose_threads(_usable_cores(), load, num_params, processes)
    torch.set_num_threads(n)
    return n, why
