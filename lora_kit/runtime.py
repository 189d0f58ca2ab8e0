"""How many CPU threads torch uses, so that a busy machine slows a run down in proportion, not 50x.

torch starts one intra-op (OpenMP) thread per core, and the threads of an op meet at a barrier before the
next op starts. When other processes hold some of the cores, the barrier waits for a thread that is not
scheduled: `lora-kit demo` took 0.25 s per step on an idle 2-core box and 12-15 s with three other
single-threaded processes running. A single thread does not have that problem but leaves an idle box's
second core unused (the tiny world's training step: 0.26 s with two threads, 0.47 s with one, measured on
the 2-core box; docs/benchmarks.md). So the count follows the cores that are actually free: the cores
this process may use minus what *other* processes kept busy over the last few seconds (from /proc/stat,
minus this process' own CPU time), at least one. `ThreadGovernor` re-measures every few seconds during long
loops (training steps, grid batches), so load that starts mid-run is followed too.

An explicit setting always wins: `OMP_NUM_THREADS` or `LORA_KIT_THREADS` (the test suite pins one thread).
torch itself has no such policy; it only takes a number (`torch.set_num_threads`).
"""

from __future__ import annotations

import os
import time

from lora_kit.errors import UserError

SAMPLE_S = 0.25  # how long the first measurement looks at the machine
INTERVAL_S = 5.0  # how often ThreadGovernor measures again


def choose_threads(cores: int, others_busy: float, processes: int = 1) -> tuple[int, str]:
    """(threads, why) for `cores` usable cores of which other processes keep `others_busy` busy, shared by
    `processes` processes of this run (pure; see the module doc)."""
    free = max(1, min(cores, round(cores - others_busy)))
    share = max(1, free // max(1, processes))
    why = f"{free} of {cores} cores free (others busy {others_busy:.1f})" + (f", {processes} processes" if processes > 1 else "")
    return share, why


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _machine_busy_seconds() -> float | None:
    """CPU-seconds all processes have been busy since boot (/proc/stat; None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class BusyMeter:
    """Cores kept busy by other processes between two readings (machine busy time minus our own)."""

    def __init__(self):
        self.last = (time.monotonic(), _machine_busy_seconds(), _own_cpu_seconds())

    def others_busy(self) -> float | None:
        now = (time.monotonic(), _machine_busy_seconds(), _own_cpu_seconds())
        (t0, m0, o0), (t1, m1, o1) = self.last, now
        self.last = now
        if m0 is None or m1 is None or t1 - t0 <= 0:
            return None
        return max(0.0, ((m1 - m0) - (o1 - o0)) / (t1 - t0))


def _explicit() -> tuple[int, str] | None:
    name = "LORA_KIT_THREADS" if os.environ.get("LORA_KIT_THREADS") else "OMP_NUM_THREADS"
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return max(1, int(value)), f"{name}={value}"
    except ValueError:
        raise UserError(f"{name}={value!r}: expected a whole number of threads") from None


def _others_now() -> float:
    """Other processes' busy cores over a short look now; the load average where /proc/stat is missing."""
    meter = BusyMeter()
    time.sleep(SAMPLE_S)
    busy = meter.others_busy()
    if busy is None:
        try:
            return os.getloadavg()[0]
        except OSError:  # no load average either
            return 0.0
    return busy


def configure_threads() -> tuple[int, str]:
    """Set torch's intra-op thread count by the rules above; returns (threads, why) for the run summary."""
    import torch  # lazy: lora_kit.cli imports this module, and `lora-kit --help` must not load torch

    explicit = _explicit()
    if explicit:
        torch.set_num_threads(explicit[0])
        return explicit
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by `accelerate launch` / torchrun
    n, why = choose_threads(_usable_cores(), _others_now(), processes)
    torch.set_num_threads(n)
    return n, why


class ThreadGovernor:
    """Call `tick()` from a long loop: every INTERVAL_S it re-measures the other processes' load and sets
    torch's thread count to the free cores (never when the count was set explicitly)."""

    def __init__(self, interval: float = INTERVAL_S):
        self.interval = interval
        self.active = _explicit() is None
        self.meter = BusyMeter()
        self.processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def tick(self) -> int | None:
        """The new thread count when it changed, else None."""
        if not self.active or time.monotonic() - self.meter.last[0] < self.interval:
            return None
        import torch  # lazy: as in configure_threads (this module is imported by lora_kit.cli)

        busy = self.meter.others_busy()
        if busy is None:
            return None
        n, _ = choose_threads(_usable_cores(), busy, self.processes)
        if n == torch.get_num_threads():
            return None
        torch.set_num_threads(n)
        return n
