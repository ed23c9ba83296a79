"""The feature store's lock on object storage, which has no file locks: a lease. A marker
object with an expiry, renewed by a thread while the writer runs; a writer proceeds only when
its marker is the only live one (``reslstm.features.store`` says why that is safe)."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from typing import Sequence

from reslstm import storage

from .schema import StoreError


def _process_gone(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` of this host has ended (or the PID now belongs to a process that
    started after ``started``, the clock time the marker's writer started)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return True
    return started is not None and _start_time(fields) > started + 5.0


def _start_time(fields: Sequence[str]) -> float:
    """Clock time a process started, from the fields of /proc/PID/stat after its name."""
    ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def _own_start_time() -> float | None:
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            return _start_time(f.read().rsplit(")", 1)[1].split())
    except (OSError, ValueError, IndexError):
        return None


class Lease:
    """The object-storage lock (``store``'s module docstring): a marker object with an expiry, renewed by a
    thread. A writer proceeds only when its marker is the only live one; a marker whose expiry
    passed, or whose writer ran on this host and has ended, is stale and removed."""

    ATTEMPTS = 3  # two writers that start together both see both markers: back off, try again

    def __init__(self, directory: storage.Location, busy: str, lease_s: float):
        self.dir, self.busy = directory, busy
        self.host, self.pid, self.started = socket.gethostname(), os.getpid(), _own_start_time()
        self.marker = directory.join(f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json")
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.renewed = 0.0  # time.monotonic() of the last successful write of the marker
        self.lease_s = lease_s

    def _put(self) -> None:
        now = time.monotonic()
        self.marker.write_text(json.dumps({"host": self.host, "pid": self.pid,
                                           "started": self.started,
                                           "expires": time.time() + self.lease_s}))
        self.renewed = now

    def _stale(self, doc: dict) -> bool:
        if doc["expires"] <= time.time():
            return True
        return doc.get("host") == self.host and doc.get("pid") != self.pid and \
            _process_gone(int(doc["pid"]), doc.get("started"))

    def _others(self) -> list[str]:
        """Live markers other than ours; stale ones are deleted on the way."""
        live = []
        for path in self.dir.list(".json"):
            if path == self.marker.path:
                continue
            loc = storage.Location(self.dir.filesystem, path, path)
            try:
                doc = json.loads(loc.read_text())
                stale = self._stale(doc)
            except FileNotFoundError:
                continue  # deleted meanwhile
            except (OSError, ValueError, KeyError, TypeError):
                stale = False  # unreadable: count it as live
            if stale:
                try:
                    loc.delete()
                except OSError:
                    pass
            else:
                live.append(path)
        return live

    def _renew(self) -> None:
        while not self.stop.wait(self.lease_s / 4):
            try:
                self._put()
            except OSError:
                pass  # tried again in a quarter lease; check() stops the writer if it lasts

    def check(self) -> None:
        if time.monotonic() - self.renewed > self.lease_s / 2:
            raise StoreError(f"{self.busy.split(' is being')[0]}: this job could not renew its "
                             f"lease on the store for {time.monotonic() - self.renewed:.0f} s "
                             f"(marker {self.marker}); it stops writing so that no other job's "
                             "rows are duplicated. Rerun the same command to continue.")

    def __enter__(self):
        for attempt in range(self.ATTEMPTS):
            self._put()
            others = self._others()
            if not others:
                break
            self.marker.delete()
            if attempt + 1 == self.ATTEMPTS:
                raise StoreError(self.busy + f" (its lease marker: {storage.display(self.dir.uri)}; "
                                 f"a killed job's marker expires {self.lease_s:.0f} s after its "
                                 "last renewal, at once when it ran on this host)")
            time.sleep(random.uniform(0.2, 1.0))
        self.thread = threading.Thread(target=self._renew, daemon=True, name="store-lease")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.marker.delete()
