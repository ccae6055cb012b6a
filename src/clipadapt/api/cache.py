"""``clipadapt.cache`` and ``clipadapt.prune_cache``: what the feature caches hold, and freeing them
(``clipadapt cache``; engine.cachedir says what is cached and how entries are chosen)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PathLike = str | Path


def _row(entry) -> dict[str, Any]:
    return {**dataclasses.asdict(entry), "path": str(entry.path)}


def cache(kinds: Sequence[str] | None = None, root: PathLike | None = None) -> dict[str, Any]:
    """The feature caches (``features``, ``views``, ``captions``; default all): ``{"root", "bytes", "kinds":
    {kind: {"entries", "bytes"}}, "models": [{"model", "entries": {kind: n}, "bytes", "last_used"}] (largest
    first), "entries": [...]}``, entries most recently used first."""
    from clipadapt.engine.cachedir import cache_entries, check_kinds
    from clipadapt.paths import feature_cache_dir

    chosen = check_kinds(list(kinds) if kinds else None)
    entries = cache_entries(chosen, root)
    per_kind = {kind: {"entries": sum(e.kind == kind for e in entries),
                       "bytes": sum(e.bytes for e in entries if e.kind == kind)} for kind in chosen}
    models: dict[str, dict[str, Any]] = {}
    for entry in entries:  # most recently used first: a model's first entry is its last use
        model = models.setdefault(entry.model, {"model": entry.model, "entries": {}, "bytes": 0,
                                                "last_used": entry.last_used})
        model["entries"][entry.kind] = model["entries"].get(entry.kind, 0) + 1
        model["bytes"] += entry.bytes
    return {"root": str(Path(root) if root is not None else feature_cache_dir()),
            "bytes": sum(e.bytes for e in entries), "kinds": per_kind,
            "models": sorted(models.values(), key=lambda m: -m["bytes"]), "entries": [_row(e) for e in entries]}


def prune_cache(*, older_than_days: float | None = None, max_size: int | str | None = None, clear: bool = False,
                kinds: Sequence[str] | None = None, dry_run: bool = False,
                root: PathLike | None = None) -> dict[str, Any]:
    """Remove feature-cache entries not used for ``older_than_days``, then the least recently used until the rest
    fit in ``max_size`` (bytes, or ``"5GB"``); ``clear`` removes every entry of ``kinds``. Entries another process
    holds are kept and listed under ``in_use``. ``dry_run`` removes nothing and says what would go."""
    from clipadapt.engine.cachedir import check_kinds, parse_size
    from clipadapt.engine.cachedir import prune_cache as prune

    max_bytes = parse_size(max_size) if isinstance(max_size, str) else max_size
    result = prune(check_kinds(list(kinds) if kinds else None), older_than_days, max_bytes, clear, dry_run, root)
    return {"dry_run": dry_run, "freed_bytes": result.freed_bytes, "kept_bytes": sum(e.bytes for e in result.kept),
            "removed": [_row(e) for e in result.removed], "in_use": [_row(e) for e in result.in_use],
            "kept": len(result.kept)}
