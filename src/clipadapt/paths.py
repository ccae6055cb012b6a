"""Where clipadapt keeps caches: ``$CLIPADAPT_HOME`` (default ``~/.cache/clipadapt``)."""

from __future__ import annotations

import os
from pathlib import Path


def clipadapt_home() -> Path:
    return Path(os.environ.get("CLIPADAPT_HOME", Path.home() / ".cache" / "clipadapt")).expanduser()


def feature_cache_dir() -> Path:
    return clipadapt_home() / "features"
