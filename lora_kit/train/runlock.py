"""One run per output folder: a lock file holding the owner's PID and host for the run's lifetime.

The lock is an exclusive `flock` on `<output_dir>/.lora-kit.lock`, held (file kept open) until the run
ends. The kernel drops it when the process dies, however it dies (kill -9 included), so there is no
stale-lock guessing and no race between two runs that start at once; the PID, host and start time
written into the file only serve the message a second run prints. A file left by a dead process is
taken over with a line. (Linux NFS clients map flock to NFS byte-range locks, so a shared disk works.)
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from lora_kit.errors import UserError

LOCK_FILE = ".lora-kit.lock"
_HELD: dict[str, "RunLock"] = {}  # path -> lock held by this process (a later run in-process replaces it)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class RunLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, say=print) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD.pop(key).release()  # an earlier run of this same process (tests, notebooks) that did not end
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read(self.path)
                host = holder.get("host", "?")
                where = "" if host == socket.gethostname() else f" on host {host}"
                raise UserError(f"{self.path.parent} is in use by another lora-kit run (PID {holder.get('pid', '?')}"
                                f"{where}, since {holder.get('since', '?')}): wait for it, or use --output-dir "
                                f"for a new folder") from None
            try:  # the holder may have deleted the file between our open and our lock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(self.path)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            say(f"{self.path.parent}: taking over the lock of PID {previous['pid']} (no longer running)")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        _HELD[key] = self
        atexit.register(self.release)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.pop(str(self.path.resolve()), None)
        try:
            os.unlink(self.path)  # while still locked: nobody can hold a lock on the file we remove
        except FileNotFoundError:
            pass
        os.close(fd)
