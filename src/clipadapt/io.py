"""Atomic file writes: a reader never sees a half-written result.

A write that runs out of space (ENOSPC) or quota (EDQUOT) raises ``DiskFull`` naming the final path: its temporary
file or directory is removed and whatever was at the path before is left as it was.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipadapt.errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_full_names(path, cleanup=lambda: tmp_path.unlink(missing_ok=True)):
            yield tmp_path
            if tmp_path.exists():  # mkstemp makes files private (0600); results get the usual permissions
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def no_space_errno(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when ``error``, or an exception it was raised from, says the disk or the quota is full; else
    None. Writers in native code (safetensors) say so only in their message: ``... (os error 28)``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull):
            return error.errno
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error.errno
        text = str(error).lower()
        for number in NO_SPACE:
            if os.strerror(number).lower() in text or f"os error {number})" in text:
                return number
        error = error.__cause__ or error.__context__
    return None


def free_bytes(path: str | Path) -> int | None:
    """Free space for an unprivileged user on the filesystem that holds ``path`` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextmanager
def disk_full_names(path: str | Path, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """An out-of-space error inside the block becomes ``DiskFull`` naming ``path`` (the file or directory the user
    asked for, not the temporary one being written) and the space free once ``cleanup`` removed the partial write."""
    try:
        yield
    except Exception as error:
        number = no_space_errno(error)
        if number is None:
            raise
        if cleanup is not None:
            cleanup()
        raise DiskFull(path, free_bytes(path), number) from error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Run ``writer(tmp_path)`` (e.g. ``fig.savefig``) and move the result into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextmanager
def staged_directory(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Write a whole run directory under a temporary name and rename it into place at the end.

    If the block fails, nothing appears at ``final`` (no half-written run directory) and what was there stays; out of
    space, the ``DiskFull`` names ``final``.
    """
    final = Path(final)
    with disk_full_names(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        # a file inside failing for space names the directory
        with disk_full_names(final, cleanup=lambda: shutil.rmtree(staging, ignore_errors=True)):
            yield staging
            if final.exists():
                if not overwrite:
                    raise FileExistsError(final)
                trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                os.replace(final, trash / final.name)
                os.replace(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_killed_writes(path: str | Path) -> list[Path]:
    """Remove what :func:`atomic_path` and :func:`staged_directory` leave behind when their process is killed
    mid-write (SIGKILL runs no ``finally``): for ``path``, its ``.NAME.partial-*`` and ``.NAME.old-*`` folders beside
    it, and under it every ``.*.tmp`` file and ``.*.partial-*`` / ``.*.old-*`` folder. Only for a path no other process
    is writing (a grid cell's run directory, under the cell's lock). Returns what it removed."""
    path = Path(path)
    found = [*path.parent.glob(f".{glob.escape(path.name)}.partial-*"),
             *path.parent.glob(f".{glob.escape(path.name)}.old-*")]
    if path.is_dir():
        found += [p for p in path.rglob(".*") if p.name.endswith(".tmp") or ".partial-" in p.name or ".old-" in p.name]
    for leftover in found:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return found
