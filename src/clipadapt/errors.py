"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


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


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C while a run directory was being trained: ``run_dir`` is what ``--resume`` continues."""

    def __init__(self, run_dir) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
