"""Training checkpoints in safetensors + JSON only (nothing is unpickled on resume).

Layout under ``RUN_DIR/checkpoints``: one ``epoch-NNNN/`` directory per saved epoch (written under a temporary
name and renamed into place) and ``latest.json`` naming the newest complete one (replaced atomically), so a crash
at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load, save_file

from clipadapt.errors import ConfigError
from clipadapt.io import atomic_path, atomic_write_json, staged_directory

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where its last completed epoch ended."""

    epoch: int  # epochs completed
    weights: dict[str, torch.Tensor]  # current trainable weights
    best_weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    progress: dict[str, Any]  # history, best score, best epoch, epochs without improvement
    metadata: dict[str, str]


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON-able rest."""
    tensors, plain = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(rest["plain"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(run_dir: Path, state: TrainingState) -> Path:
    """Write ``epoch-NNNN/`` whole, then point latest.json at it, then remove the older ones: a failure at any step
    (a full disk: ``DiskFull``) leaves latest.json naming the previous complete checkpoint, which still exists."""
    root = Path(run_dir) / CHECKPOINT_DIR
    name = f"epoch-{state.epoch:04d}"
    previous = latest_checkpoint(run_dir)
    _remove_epochs(root, keep=previous.name if previous else None)  # orphans of a save that failed: room first
    with staged_directory(root / name, overwrite=True) as stage:
        _save_tensors(stage / "weights.safetensors", state.weights, state.metadata)
        _save_tensors(stage / "best.safetensors", state.best_weights, state.metadata)
        tensors, rest = optimizer_tensors(state.optimizer)
        _save_tensors(stage / "optimizer.safetensors", tensors)
        _save_tensors(stage / "rng.safetensors", state.rng)
        atomic_write_json(stage / "state.json", {"epoch": state.epoch, "optimizer": rest,
                                                 "scheduler": state.scheduler, "progress": state.progress})
    atomic_write_json(root / LATEST, {"epoch": state.epoch, "dir": name})
    _remove_epochs(root, keep=name)  # older checkpoints are no longer needed once latest.json moved on
    return root / name


def _remove_epochs(root: Path, keep: str | None) -> None:
    """Every ``epoch-*`` directory but ``keep``: older checkpoints, and a complete one that latest.json never came to
    name because writing latest.json failed (a resumed run trains that epoch again)."""
    for old in root.glob("epoch-*"):
        if old.name != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    directory = pointer.parent / json.loads(pointer.read_text())["dir"]
    return directory if directory.is_dir() else None


def read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"no weights at '{path}'")
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def check_metadata(path: Path, expected: dict[str, str]) -> dict[str, str]:
    """Refuse weights trained on another model, by another method or for other classes."""
    found = read_metadata(path)
    if found.get("model_fingerprint") != expected["model_fingerprint"]:
        raise ConfigError(f"checkpoint '{path}' was trained on model {found.get('model_fingerprint')}, "
                          f"not on this model ({expected['model_fingerprint']})")
    if found.get("method") != expected["method"]:
        raise ConfigError(f"checkpoint '{path}' holds '{found.get('method')}' weights, not '{expected['method']}'")
    if found.get("classes") != expected.get("classes"):
        raise ConfigError(f"checkpoint '{path}' was trained on other classes")
    for key in sorted(set(expected) - {"model_fingerprint", "method", "classes"}):  # e.g. a caption run's bridge
        if found.get(key) != expected[key]:
            raise ConfigError(f"checkpoint '{path}' has {key} '{found.get(key)}', not '{expected[key]}'")
    return found


def load_checkpoint(directory: Path, expected: dict[str, str]) -> TrainingState:
    weights_path = directory / "weights.safetensors"
    metadata = check_metadata(weights_path, expected)
    info = json.loads((directory / "state.json").read_text())
    return TrainingState(
        epoch=int(info["epoch"]),
        weights=_read_tensors(weights_path),
        best_weights=_read_tensors(directory / "best.safetensors"),
        optimizer=optimizer_state(_read_tensors(directory / "optimizer.safetensors"), info["optimizer"]),
        scheduler=info["scheduler"],
        rng=_read_tensors(directory / "rng.safetensors"),
        progress=info["progress"],
        metadata=metadata,
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read into memory. ``load_file`` maps the file instead, and the optimizer
    keeps those tensors for the rest of the run: once the next checkpoint removes this one, its deleted files would
    still hold their space on disk (a resumed run would need room for three checkpoints rather than two)."""
    return load(path.read_bytes())


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / CHECKPOINT_DIR, ignore_errors=True)
