"""One run per output folder: a lock file holding the owner's PID and host for the run's lifetime.

A second `lora-kit train` on the same folder stops with one line naming the holder. A lock left by a
process that died (kill -9, power loss) on this host is taken over with a line; one held from another
host (a shared network disk) is never guessed dead: the user removes it. `O_CREAT | O_EXCL` makes taking
the lock atomic; fcntl locks are not used because they are unreliable on network file systems.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import time
from pathlib import Path

from lora_kit.errors import UserError

LOCK_FILE = ".lora-kit.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class RunLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def acquire(self, say=print) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me, say)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return self
        raise UserError(f"{self.path.parent}: could not take the run lock {self.path.name}")

    def _take_over_if_stale(self, me: dict, say) -> None:
        holder = _read(self.path)
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or host is None:
            # Half-written by a process killed between create and write: only stale if it is old.
            if time.time() - self._mtime() < 10:
                time.sleep(1)
                holder = _read(self.path)
                if holder.get("pid"):
                    return self._take_over_if_stale(me, say)
            say(f"{self.path.parent}: removing an unreadable run lock {self.path.name}")
        elif host == me["host"] and (pid == me["pid"] or not _alive(pid)):
            if pid != me["pid"]:
                say(f"{self.path.parent}: taking over the lock of PID {pid} (no longer running)")
        else:
            where = "" if host == me["host"] else f" on host {host}"
            raise UserError(f"{self.path.parent} is in use by another lora-kit run (PID {pid}{where}, since "
                            f"{holder.get('since', '?')}): wait for it, or use --output-dir for a new folder"
                            + ("" if host == me["host"] else f"; if that run is gone, delete {self.path}"))
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if _read(self.path).get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
