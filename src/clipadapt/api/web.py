"""``clipadapt.app`` and ``clipadapt.space``: the web page of ``clipadapt app`` for notebooks and scripts, and the
Hugging Face Space folder of ``clipadapt app --space`` (Gradio: ``pip install 'clipadapt[app]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike as _PathLike
from pathlib import Path
from typing import Any

PathLike = str | _PathLike


def _run_paths(runs: PathLike | Sequence[PathLike] | Any) -> list[Path]:
    from clipadapt.engine.runview import RunView
    from clipadapt.webapp.panels import find_runs

    items = [runs] if isinstance(runs, str | _PathLike | RunView) else list(runs)
    return find_runs([item.dir if isinstance(item, RunView) else Path(item) for item in items])


def app(runs: PathLike | Sequence[PathLike] | Any, *, device: str | None = None, share_folder: PathLike | None = None,
        title: str = "clipadapt: your runs on your photo") -> Any:
    """The page of ``clipadapt app`` as a Gradio ``Blocks`` (``.launch()`` it; in Jupyter it shows inline).

    ``runs``: run directories (or ``Run`` objects), or folders of runs (a compare or benchmark output: every
    finished run below, the first three shown). ``share_folder``: its photos are offered as examples. Runs load on
    the first photo. The page fetches nothing from outside the machine (offline theme, no analytics)."""
    from clipadapt.webapp.page import build_page, gradio

    gradio()  # the one-line error naming the extra, before any run is read
    folder = Path(share_folder) if share_folder is not None else None
    if folder is not None and not folder.is_dir():
        from clipadapt.errors import ConfigError

        raise ConfigError(f"--share-folder '{folder}' is not a folder")
    return build_page(_run_paths(runs), device, folder, title)


def space(runs: PathLike | Sequence[PathLike] | Any, out: PathLike, *, overwrite: bool = False,
          device: str | None = None, title: str = "clipadapt runs") -> dict[str, Any]:
    """Write a Hugging Face Space folder serving ``runs`` (``clipadapt app --space``): README.md with the Space front
    matter, app.py (no clipadapt needed), requirements.txt, each run's ``clipadapt export`` in models/ and example
    images. Runs that cannot be exported, and caption runs, are refused in one line before anything is written."""
    from clipadapt.webapp.page import example_images
    from clipadapt.webapp.panels import make_panel
    from clipadapt.webapp.space import check_space, write_space

    run_dirs = _run_paths(runs)
    check_space(run_dirs, Path(out), overwrite)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clipadapt-space-") as scratch:
        examples = example_images([make_panel(run_dirs[0], device)], None, Path(scratch))
        return write_space(run_dirs, Path(out), overwrite, device, examples, title)
