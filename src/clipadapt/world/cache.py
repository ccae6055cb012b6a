"""Cached world models under ``$CLIPADAPT_HOME/world``: built on first use, verified on every load.

A build happens in a staging directory beside the cache entry and is renamed into place only when complete,
with a manifest of SHA-256 hashes written last. A file lock makes a second process wait for the first
builder instead of building twice. An entry whose manifest is missing or whose files do not match it
(interrupted build, truncated file) is removed and rebuilt, never loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipadapt.io import atomic_write_text
from clipadapt.paths import clipadapt_home

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def world_dir() -> Path:
    return clipadapt_home() / "world"


def recipe_key(recipe: Any) -> str:
    """Identity of a dataclass recipe: a cache entry built from another recipe is rebuilt."""
    return hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, recipe_key: str) -> dict:
    files = {p.relative_to(directory).as_posix(): _sha256(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = {"recipe": recipe_key, "files": files}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def weights_fingerprint(name: str, directory: Path) -> str:
    """``NAME:<first 16 hex of model.safetensors' hash>`` from a verified entry's manifest (recorded with runs)."""
    weights = (read_manifest(directory) or {}).get("files", {}).get("model.safetensors", "")
    return f"{name}:{weights[:16]}"


def read_manifest(directory: Path) -> dict | None:
    """The manifest as written (not checked against the files; see ``verify``)."""
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(directory: Path, recipe_key: str | None = None) -> dict | None:
    """The manifest if every file matches it (and it was built from ``recipe_key``, when given), else None."""
    manifest = read_manifest(directory)
    if manifest is None or not manifest.get("files"):
        return None
    if recipe_key is not None and manifest.get("recipe") != recipe_key:
        return None
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file() or _sha256(path) != digest:
            return None
    return manifest


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_built(name: str, recipe_key: str, build: Callable[[Path], None], force: bool = False) -> Path:
    """Return the verified cache directory of ``name``, building it (once, atomically) if needed.

    ``force`` rebuilds even a valid entry (still under the lock, still renamed into place at the end).
    """
    final = world_dir() / name
    if not force and verify(final, recipe_key):
        return final
    with _locked(world_dir() / f".{name}.lock"):
        if not force and verify(final, recipe_key):  # another process finished it while we waited
            return final
        if final.exists() and not force:
            log.warning("world model cache %s is incomplete, corrupt or outdated; rebuilding", final)
            shutil.rmtree(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=world_dir()))
        try:
            build(staging)  # a builder keeps its threads and seeding to itself (world/reproducible.py)
            write_manifest(staging, recipe_key)
            if final.exists():  # force: the old entry stays valid until the new one is complete
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return final
