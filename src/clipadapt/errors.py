"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import errno


class ClipAdaptError(Exception):
    """Bad input or an environment problem the user can act on (never a bug in clipadapt)."""


class UnknownNameError(ClipAdaptError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ClipAdaptError, ValueError):
    """An invalid configuration value or key."""


class DataError(ClipAdaptError):
    """A dataset that cannot be read, or an image that cannot be decoded under --strict."""


class NameTakenError(ConfigError):
    """A method, dataset, model or template set registered under a name that is already taken."""


class DiskFull(ClipAdaptError):
    """A write that failed for want of space (ENOSPC) or of quota (EDQUOT). The file or directory being written was
    left out whole (no temporary file stays behind) and what was at its path before is untouched, so a run continues
    once space is freed: ``clipadapt train --resume``, or a grid again with ``--skip-existing``."""

    RESUME = ("free some space, then resume (clipadapt train --resume --out RUN; benchmark, compare or a sweep: the "
              "same command with --skip-existing)")

    def __init__(self, path=None, free: int | None = None, number: int = errno.ENOSPC, hint: str = RESUME) -> None:
        self.path, self.free, self.errno = path, free, number
        what = "disk quota exceeded" if number == errno.EDQUOT else "no space left on device"
        where = f" writing '{path}'" if path is not None else ""
        room = f" ({format_bytes(free)} free on its filesystem)" if free is not None else ""
        super().__init__(f"{what}{where}{room}: {hint}")

    def with_hint(self, hint: str) -> DiskFull:
        return DiskFull(self.path, self.free, self.errno, hint)


def format_bytes(size: int) -> str:
    """``0 B``, ``512 B``, ``44.0 KiB``, ``1.5 GiB``."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C while a run directory was being trained: ``run_dir`` is what ``--resume`` continues."""

    def __init__(self, run_dir) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
