"""``clipadapt app RUN... --space DIR``: a Hugging Face Space folder that serves the runs without clipadapt.

DIR holds ``README.md`` (the Space's front matter: ``sdk: gradio``, its version, ``app_file: app.py``), ``app.py``
(``space_app.py`` of this package: transformers, torch, safetensors and gradio only), ``requirements.txt``, one
``clipadapt export`` per run in ``models/`` and a few example images in ``examples/``. ``python app.py`` in DIR
serves it; pushing DIR to a Space (``huggingface-cli upload`` or git) publishes it.

What ``clipadapt export`` refuses (prompts, adapters, caches, ensembles, oracle runs) cannot go to a Space either, and
neither can caption runs (export has no format for a bridge and decoder adapters): each is refused in one line
before anything is written, and DIR appears whole or not at all.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from clipadapt.engine.rundir import read_run_config
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_write_text, staged_directory
from clipadapt.paths import slug

REQUIREMENTS = ["torch>=2.2", "transformers>=5.0,<6", "safetensors>=0.4", "pillow>=10.0"]
EXAMPLES = 6


def _gradio_version() -> str:
    try:
        import gradio
    except ImportError:
        return "6.0.0"  # the oldest the page supports (clipadapt[app] asks for gradio>=6)
    return gradio.__version__


def check_space(run_dirs: list[Path], out: str | Path, overwrite: bool = False) -> None:
    """Refuse, in one line and before any model loads, the runs a Space cannot serve and an existing ``out``."""
    from clipadapt.classification.export import export_refusal

    if Path(out).exists() and not overwrite:
        raise ConfigError(f"'{out}' already exists; pass --overwrite to replace it")
    if not run_dirs:
        raise ConfigError("no runs to put in the Space")
    for run_dir in run_dirs:
        if read_run_config(run_dir).get("task") == "captioning":
            raise ConfigError(f"'{run_dir}' is a caption run: a Space needs `clipadapt export`, which has no format "
                              f"for a caption run's bridge and decoder adapters; give classification runs")
        refusal = export_refusal(run_dir)
        if refusal:
            raise ConfigError(f"cannot put '{run_dir}' in a Space: {refusal}")


def _front_matter(title: str, gradio_version: str) -> list[str]:
    return ["---", f"title: {title}", "emoji: 🖼️", "colorFrom: indigo", "colorTo: yellow", "sdk: gradio",
            f"sdk_version: {gradio_version}", "app_file: app.py", "pinned: false", "---", ""]


def write_space(run_dirs: list[Path], out: str | Path, overwrite: bool = False, device: str | None = None,
                examples: list[str] | None = None, title: str = "clipadapt runs") -> dict:
    """Write the Space folder ``out`` for ``run_dirs`` (checked with ``check_space`` first); returns ``{"out",
    "models", "files"}``."""
    from clipadapt.classification.export import export_run

    out = Path(out)
    if out.exists() and not overwrite:  # check_space said so before any model loaded; a direct call gets it here
        raise ConfigError(f"'{out}' already exists; pass --overwrite to replace it")
    gradio_version = _gradio_version()
    models = []
    with staged_directory(out, overwrite=overwrite) as stage:
        for k, run_dir in enumerate(run_dirs):
            name = f"{k:02d}-{slug(run_dir.name)}"
            record = export_run(run_dir, stage / "models" / name, device=device)
            models.append({"folder": f"models/{name}", "run": str(run_dir), "method": record["method"],
                           "model": record["model"], "dataset": record["dataset"], "kind": record["kind"]})
        for k, path in enumerate((examples or [])[:EXAMPLES]):
            (stage / "examples").mkdir(exist_ok=True)
            shutil.copyfile(path, stage / "examples" / f"{k:02d}-{slug(Path(path).stem)}.png")
        template = resources.files("clipadapt.webapp").joinpath("space_app.py").read_text()
        atomic_write_text(stage / "app.py", template)
        atomic_write_text(stage / "requirements.txt", "\n".join([*REQUIREMENTS, f"gradio=={gradio_version}"]) + "\n")
        rows = [f"| `{m['folder']}` | {m['method']} | `{m['model']}` | {m['dataset']} | {m['kind']} |" for m in models]
        readme = [*_front_matter(title, gradio_version), f"# {title}", "",
                  "Adapted CLIP models exported by clipadapt (`clipadapt app RUN... --space DIR`). Drop a photo to "
                  "see each model's top-5 classes. `app.py` needs transformers, torch, safetensors and gradio only; "
                  "run it locally with `python app.py`.", "",
                  "| folder | method | base model | dataset | classifier |", "|---|---|---|---|---|", *rows, ""]
        atomic_write_text(stage / "README.md", "\n".join(readme))
    return {"out": str(out), "models": models, "files": sorted(p.relative_to(out).as_posix()
                                                             for p in out.rglob("*") if p.is_file())}
