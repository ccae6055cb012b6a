"""Where clipadapt keeps caches: ``$CLIPADAPT_HOME`` (default ``~/.cache/clipadapt``)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def clipadapt_home() -> Path:
    return Path(os.environ.get("CLIPADAPT_HOME", Path.home() / ".cache" / "clipadapt")).expanduser()


def feature_cache_dir() -> Path:
    return clipadapt_home() / "features"


def slug(text: str) -> str:
    """A file-name-safe, lower-case form of ``text`` (run directories, report figures)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:60] or "run"
