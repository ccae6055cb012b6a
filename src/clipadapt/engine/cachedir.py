"""What the feature caches hold, and pruning them (``clipadapt cache``, ``clipadapt.cache``).

Three caches live under ``$CLIPADAPT_HOME/features`` (``paths.feature_cache_dir``):

* ``features``: encoded splits, ``<key>.safetensors`` (``engine.features.FeatureCache``);
* ``views``: augmented feature views, ``views/<key>/`` with ``views.npy`` and ``meta.json`` (``engine.views``);
* ``captions``: the caption encoder's features, ``captioning/<key>.safetensors`` (``captioning.encoder``).

An entry's key hashes model x split x preprocessing x dtype, so nothing in it says when it stops being useful: a new
checkpoint or a changed split leaves the old entries behind, and an ImageNet split is about 1.3 GB per model. Every
read touches its entry (the file's modification time is its last use), so pruning removes the least recently used
first. An entry is removed under its own lock, taken without waiting: one a process is writing or reading through
``through`` at that moment is kept and counted. The world's built models (``$CLIPADAPT_HOME/world``) are not a
cache of this kind (``clipadapt world`` rebuilds them, minutes each) and are left alone.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.errors import ConfigError
from clipadapt.paths import feature_cache_dir

KINDS = ("features", "views", "captions")
SUBFOLDERS = {"views": "views", "captions": "captioning"}
# binary units, as errors.format_bytes prints them (KiB, ...), with the short spellings people type (5GB, 2g)
UNITS = {"": 1, "b": 1, **{f"{p}{s}": 1024 ** (i + 1) for i, p in enumerate("kmgt") for s in ("", "b", "ib")}}


def lock_path(entry: Path) -> Path:
    """The lock file beside a cache entry: the process encoding it holds it (``SplitCache.through``,
    ``ViewCache.through``), and pruning takes it without waiting."""
    return entry.with_name(entry.name + ".lock")


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    path: Path  # a .safetensors file, or a views directory
    bytes: int
    last_used: float  # seconds since the epoch
    model: str  # the model spec that wrote it ("?" when unreadable)
    split: str


@dataclass
class PruneResult:
    removed: list[CacheEntry] = field(default_factory=list)
    in_use: list[CacheEntry] = field(default_factory=list)  # matched, but locked by another process: kept
    kept: list[CacheEntry] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed_bytes(self) -> int:
        return sum(e.bytes for e in self.removed)


def parse_size(text: str) -> int:
    """``"500MB"``, ``"2g"``, ``"1.5 GiB"``, ``"123"`` (bytes) -> bytes; binary units (1 GB = 1 GiB = 1024^3)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found.group(2).lower() if found else None
    if found is None or unit not in UNITS:
        raise ConfigError(f"bad size '{text}'; give a number with an optional unit: B, KB, MB, GB, TB or KiB ... "
                          f"(e.g. 5GB)")
    return int(float(found.group(1)) * UNITS[unit])


def check_kinds(kinds: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if not kinds:
        return KINDS
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown cache kind '{unknown[0]}'; valid choices: {', '.join(KINDS)}")
    return tuple(dict.fromkeys(kinds))


def _safetensors_entry(kind: str, path: Path) -> CacheEntry:
    model = split = "?"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:  # the header only
            meta = f.metadata() or {}
        model, split = meta.get("model", "?"), meta.get("split", "?")
    except Exception:  # unreadable: listed (and prunable) all the same
        pass
    stat = path.stat()
    return CacheEntry(kind, path, stat.st_size, stat.st_mtime, model, split)


def _views_entry(path: Path) -> CacheEntry | None:
    meta_file = path / "meta.json"
    files = [p for p in path.iterdir() if p.is_file()]
    if not files:
        return None
    model = split = "?"
    try:
        meta = json.loads(meta_file.read_text())
        model, split = meta.get("model", "?"), meta.get("split", "?")
    except (OSError, ValueError):
        pass
    used = (meta_file if meta_file.is_file() else files[0]).stat().st_mtime
    return CacheEntry("views", path, sum(p.stat().st_size for p in files), used, model, split)


def cache_entries(kinds: list[str] | tuple[str, ...] | None = None, root: str | Path | None = None
                  ) -> list[CacheEntry]:
    """Every entry of the chosen caches (default: all three) under ``root`` (default: the feature cache), most
    recently used first. Files being written (``.tmp``) and lock files are not entries."""
    root = Path(root) if root is not None else feature_cache_dir()
    entries: list[CacheEntry] = []
    for kind in check_kinds(kinds):
        folder = root / SUBFOLDERS[kind] if kind in SUBFOLDERS else root
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if kind == "views" and path.is_dir() and not path.name.startswith("."):
                entry = _views_entry(path)
                if entry is not None:
                    entries.append(entry)
            elif kind != "views" and path.is_file() and path.name.endswith(".safetensors"):
                entries.append(_safetensors_entry(kind, path))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def touch(path: Path) -> None:
    """Mark a cache entry used now (its last use, for pruning); a read-only cache is left as it is."""
    with contextlib.suppress(OSError):
        path.touch(exist_ok=True)


def prune_cache(kinds: list[str] | tuple[str, ...] | None = None, older_than_days: float | None = None,
                max_bytes: int | None = None, clear: bool = False, dry_run: bool = False,
                root: str | Path | None = None) -> PruneResult:
    """Remove entries not used for ``older_than_days``, then the least recently used until the rest fit in
    ``max_bytes``; ``clear`` removes every entry of the chosen kinds. ``dry_run``: say what would go, remove
    nothing."""
    from filelock import FileLock, Timeout

    if not clear and older_than_days is None and max_bytes is None:
        raise ConfigError("say what to prune: --older-than DAYS, --max-size SIZE, or --clear (every entry)")
    if older_than_days is not None and older_than_days < 0:
        raise ConfigError(f"--older-than must be 0 days or more, got {older_than_days}")
    if max_bytes is not None and max_bytes < 0:
        raise ConfigError(f"--max-size must be 0 or more, got {max_bytes}")
    entries = cache_entries(kinds, root)  # most recently used first
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    result, total, full = PruneResult(dry_run=dry_run), 0, False
    for entry in entries:
        too_old = cutoff is not None and entry.last_used < cutoff
        # least recently used first: once an entry does not fit, it and every older one go
        full = full or (max_bytes is not None and not too_old and total + entry.bytes > max_bytes)
        if not (clear or too_old or full):
            result.kept.append(entry)
            total += entry.bytes
            continue
        if dry_run:
            result.removed.append(entry)
            continue
        lock = FileLock(str(lock_path(entry.path)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            result.in_use.append(entry)
            total += entry.bytes
            continue
        try:
            if entry.path.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                entry.path.unlink(missing_ok=True)
            result.removed.append(entry)
        finally:
            lock.release()
        lock_path(entry.path).unlink(missing_ok=True)
    return result
