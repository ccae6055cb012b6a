"""The requests a grid's cells make, as Slurm writes them: a time limit (``--time``), memory (``--mem``) and more
``--slurm-setting KEY=VALUE`` items; parsed here with one-line errors, before anything is submitted.

Formats follow sbatch(1): ``--time`` is ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS``;
``--mem`` a whole number with an optional unit K, M (the default), G or T.
"""

from __future__ import annotations

import math
import re
from typing import Any

from clipadapt.errors import ConfigError

TIME_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS"
MEMORY_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# requests with their own option; a --slurm-setting may not set them behind the option's back
OWN_OPTIONS = {"partition": "--partition", "time": "--time", "cpus_per_task": "--cpus-per-run",
               "gpus_per_node": "--gpus-per-run", "num_gpus": "--gpus-per-run", "gpus_per_task": "--gpus-per-run",
               "mem": "--mem", "array_parallelism": "--array-parallelism"}
# a cell is one task on one node: more tasks would each run the cell (the second waiting, then training it again)
ONE_TASK = {"nodes", "ntasks_per_node", "use_srun"}


def time_minutes(text: str) -> int:
    """Slurm's time limit in whole minutes (seconds round up: Slurm rounds a limit up to the minute)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"--time '{text}' is not a Slurm time; valid forms: {TIME_FORMS}")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
    elif third is not None:  # HH:MM:SS
        total = int(first) * 60 + int(second) + int(third) / 60
    else:  # MM or MM:SS
        total = int(first) + int(second or 0) / 60
    if total <= 0:
        raise ConfigError(f"--time '{text}' is no time at all; give a limit of a minute or more ({TIME_FORMS})")
    return math.ceil(total)


def memory_bytes(text: str) -> int:
    """``--mem`` in bytes (a bare number is megabytes, as for sbatch)."""
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"--mem '{text}' is not an amount of memory; valid forms: a whole number with K, M, G "
                          f"or T (e.g. 32G; a bare number is megabytes)")
    return int(match.group(1)) * MEMORY_UNITS[match.group(2) or "M"]


def parse_settings(items: list[str], valid: set[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as submitit parameters (values read as YAML: 2 is a number, true a flag); a key that is
    not one of ``valid`` or that has its own option is refused, naming the valid keys."""
    import yaml

    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--slurm-setting '{item}' must be KEY=VALUE (e.g. account=mylab)")
        if key in OWN_OPTIONS:
            raise ConfigError(f"--slurm-setting '{key}' has its own option: give {OWN_OPTIONS[key]} instead")
        if key in ONE_TASK:
            raise ConfigError(f"--slurm-setting '{key}': each cell is one task on one node (more tasks would each run "
                              f"it); valid keys: {', '.join(sorted(valid - set(OWN_OPTIONS) - ONE_TASK))}")
        if key not in valid:
            keys = ", ".join(sorted(valid - set(OWN_OPTIONS) - ONE_TASK))
            raise ConfigError(f"unknown --slurm-setting '{key}'; valid keys: {keys}")
        settings[key] = yaml.safe_load(value) if value.strip() else ""
    return settings
