"""Locks that keep a grid's cells from running twice: one driver per output folder, one attempt per cell.

* :func:`exclusive_out` is held by the driver (``benchmark``, ``compare``, ``train --sweep``) while its cells run:
  a second driver on the same ``--out`` refuses in one line, naming the holder (pid, host, start). Refusing is
  simpler to reason about than two drivers sharing the cells: with two, a cell one driver has queued looks
  unstarted to the other, and both would run it.
* :func:`cell_lock` is held by whichever worker runs a cell (a local process, a Ray worker, a Slurm job). It outlives
  the driver: a cell still running in a Slurm job (or a submitit local job) after its driver was killed keeps its
  lock, so the same cell started again by ``--skip-existing`` waits for it and then finds its result, instead of
  training it a second time.

Both are ``fcntl.flock`` locks: the kernel drops them when their process dies (SIGKILL included), so a lock is never
left stale. They hold on one machine and on shared filesystems whose flock reaches every node (NFSv4, Lustre mounted
with ``-o flock``, GPFS); where it does not, run one driver per folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from clipadapt.errors import ConfigError
from clipadapt.paths import slug

STATE_DIR = ".clipadapt"  # under a grid's --out: its locks
log = logging.getLogger(__name__)


def _holder() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def _open_locked(path: Path, blocking: bool) -> int | None:
    """An open descriptor holding the flock of ``path`` (created if missing), or None when another process holds it
    and ``blocking`` is False. A file unlinked by its previous holder between our open and our lock is opened again,
    so two processes never both hold "the" lock through two different files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder().encode(), 0)


def _read_holder(path: Path) -> str:
    try:
        found = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {found.get('pid')} on {found.get('host')}, since {found.get('since')}" if found else "another process"


@contextmanager
def exclusive_out(out: str | Path, what: str = "grid") -> Iterator[None]:
    """Hold ``OUT/.clipadapt/driver.lock`` for the block, or refuse in one line when another driver holds it. The
    lock file and its folders go when the block ends (``OUT`` too, when this made it and nothing was written)."""
    out = Path(out)
    made_out = not out.exists()
    path = out / STATE_DIR / "driver.lock"
    fd = _open_locked(path, blocking=False)
    if fd is None:
        raise ConfigError(f"another {what} is running on --out '{out}' ({_read_holder(path)}); wait for it to "
                          f"finish, or give another --out")
    try:
        _write_holder(fd)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        for folder in (out / STATE_DIR / "cells", out / STATE_DIR, *[out] * made_out):
            with suppress(OSError):  # only when empty: nothing left behind but results (and a refused run: nothing)
                folder.rmdir()


def cell_lock_path(out: str | Path, key: str) -> Path:
    import hashlib

    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(out) / STATE_DIR / "cells" / f"{slug(key)[-40:]}-{digest}.lock"


@contextmanager
def cell_lock(path: str | Path | None, key: str) -> Iterator[None]:
    """Hold a cell's lock while it runs; when another process holds it (the same cell, still running after its
    driver died), wait for it first. ``path`` None: no lock (a cell run outside a grid)."""
    if path is None:
        yield
        return
    path = Path(path)
    fd = _open_locked(path, blocking=False)
    if fd is None:
        log.warning("%s is running in another process (%s); waiting for it", key, _read_holder(path))
        fd = _open_locked(path, blocking=True)
    assert fd is not None
    try:
        _write_holder(fd)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
