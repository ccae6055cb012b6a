"""Locks that keep a grid's cells from running twice: one driver per output folder, one attempt per cell, and no
attempt from a driver that another has replaced.

* :func:`exclusive_out` is held by the driver (``benchmark``, ``compare``, ``train --sweep``) from its planning to its
  report: a second driver on the same ``--out`` refuses in one line, naming the holder (pid, host, start). Refusing is
  simpler to reason about than two drivers sharing the cells: with two, a cell one driver has queued looks unstarted
  to the other, and both would run it. The lock file also holds the driver's **token**, a fresh id per driver.
* :func:`cell_lock` is held by whichever worker runs a cell (a local process, a Ray worker, a Slurm job) with the
  cell's :class:`Claim`. It outlives the driver: a cell still running in a Slurm job after its driver was killed keeps
  its lock, so the same cell started again by ``--skip-existing`` waits for it, then finds its result instead of
  training it a second time. A job of the killed driver that only starts after a new driver took the folder (still
  queued in Slurm when its driver died) finds another token in the driver lock: it is superseded, and leaves the cell
  to the new driver instead of replacing what that one wrote.

Both are ``fcntl.flock`` locks: the kernel drops them when their process dies (SIGKILL included), so a lock is never
left stale. They hold on one machine and on shared filesystems whose flock reaches every node (NFSv4, Lustre mounted
with ``-o flock``, GPFS). Where the filesystem has no flock at all (NFS mounted ``nolock``) the grid runs without
locks, with a warning: then run one driver per folder, and do not rerun a grid while jobs of a killed driver remain.
Where flock is local to each node (Lustre ``localflock``) the locks cannot see each other across nodes; the same holds.

A flock belongs to the open file, which a forked child shares (a ``DataLoader`` worker is forked from the process that
holds the driver or cell lock): the lock would outlive its holder until every such child is gone, and a driver killed
with ``kill -9`` would seem to run on. So a forked child closes its copies at once (``os.register_at_fork``); closing a
copy never releases the parent's lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.paths import slug

STATE_DIR = ".clipadapt"  # under a grid's --out: its locks
DRIVER_LOCK = "driver.lock"
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
log = logging.getLogger(__name__)
_HELD: set[int] = set()  # descriptors of the locks this process holds, closed in its forked children


def _drop_inherited() -> None:
    for fd in _HELD:
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited)


@dataclass(frozen=True)
class Claim:
    """What a cell holds while it runs: its own lock file, and the token of the driver that sent it (in the driver's
    lock file), so that an attempt sent by a driver since replaced stands down. Picklable: it travels with the cell."""

    lock: str
    driver_lock: str
    token: str


class Superseded(ClipAdaptError):
    """A cell sent by a driver that another driver has replaced on the same folder (the new one runs the cell)."""


def _holder(token: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "token": token})


def _open_locked(path: Path, blocking: bool) -> int | None:
    """An open descriptor holding the flock of ``path`` (created if missing), or None when another process holds it
    and ``blocking`` is False; -1 when the filesystem has no flock (a warning, and no lock). A file unlinked by its
    previous holder between our open and our lock is opened again, so two processes never both hold "the" lock
    through two different files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as e:
            if e.errno not in NO_FLOCK:
                os.close(fd)
                raise
            log.warning("the filesystem of '%s' has no file locks (%s): running without them; run one driver per "
                        "folder", path.parent, e.strerror)
            return -fd - 1  # still open, to write the holder; not locked
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _HELD.add(fd)
            return fd
        os.close(fd)


def _write_holder(fd: int, token: str = "") -> None:
    fd = fd if fd >= 0 else -fd - 1
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder(token).encode(), 0)


def _close(fd: int) -> None:
    _HELD.discard(fd)
    os.close(fd if fd >= 0 else -fd - 1)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError):  # not ours to signal, or not a pid: assume it runs
        return True
    return True


def _read_holder(path: Path) -> str:
    found = _read(path)
    if not found:
        return "another process"
    holder = f"pid {found.get('pid')} on {found.get('host')}, since {found.get('since')}"
    if found.get("host") == socket.gethostname() and not _alive(found.get("pid")):
        holder += "; that pid has ended, but a process it started still holds the lock"
    return holder


@contextmanager
def exclusive_out(out: str | Path, what: str = "grid") -> Iterator[str]:
    """Hold ``OUT/.clipadapt/driver.lock`` for the block and yield this driver's token, or refuse in one line when
    another driver holds it. The lock file and its folders go when the block ends (``OUT`` too, when this made it and
    nothing was written)."""
    out = Path(out)
    made_out = not out.exists()
    path = out / STATE_DIR / DRIVER_LOCK
    fd = _open_locked(path, blocking=False)
    if fd is None:
        raise ConfigError(f"another {what} is running on --out '{out}' ({_read_holder(path)}); wait for it to "
                          f"finish, or give another --out")
    token = uuid.uuid4().hex
    try:
        _write_holder(fd, token)
        yield token
    finally:
        path.unlink(missing_ok=True)
        _close(fd)
        for folder in (out / STATE_DIR / "cells", out / STATE_DIR, *[out] * made_out):
            with suppress(OSError):  # only when empty: nothing left behind but results (and a refused run: nothing)
                folder.rmdir()


def cell_claim(out: str | Path, key: str, token: str) -> Claim:
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    state = Path(out) / STATE_DIR
    return Claim(str(state / "cells" / f"{slug(key)[-40:]}-{digest}.lock"), str(state / DRIVER_LOCK), token)


def cell_lock_path(out: str | Path, key: str) -> Path:
    """Where cell ``key`` of the grid in ``out`` holds its lock while it runs."""
    return Path(cell_claim(out, key, "").lock)


@contextmanager
def cell_lock(claim: Claim | None, key: str) -> Iterator[None]:
    """Hold a cell's lock while it runs; when another process holds it (the same cell, still running after its
    driver died), wait for it first. Raises :class:`Superseded` when the driver that sent this attempt has been
    replaced on the folder. ``claim`` None: no lock (a cell run outside a grid)."""
    if claim is None:
        yield
        return
    path = Path(claim.lock)
    fd = _open_locked(path, blocking=False)
    if fd is None:
        log.warning("%s is running in another process (%s); waiting for it", key, _read_holder(path))
        fd = _open_locked(path, blocking=True)
    assert fd is not None
    try:
        if claim.token and _read(Path(claim.driver_lock)).get("token") != claim.token:
            raise Superseded(f"{key}: sent by a driver since replaced on this folder; the driver now holding it runs "
                             f"the cell")
        _write_holder(fd)
        yield
    finally:
        path.unlink(missing_ok=True)
        _close(fd)
