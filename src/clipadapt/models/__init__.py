"""Model registry and ``load_model(spec) -> ClipBundle``.

Specs: a registered name (``clipadapt models``), a hub id (``openai/clip-vit-base-patch32``), a local
directory, or ``open_clip:ARCH/TAG``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from clipadapt.errors import ClipAdaptError, UnknownNameError
from clipadapt.models.bundle import ClipBundle
from clipadapt.registry import Registry, callable_package

ModelLoader = Callable[..., ClipBundle]

MODELS: Registry[ModelLoader] = Registry("model")
"""Named models: aliases for hub checkpoints and built-in models."""

SCHEMES: Registry[ModelLoader] = Registry("model scheme")
"""``scheme:argument`` specs, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``."""

HUB_ALIASES = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336": "openai/clip-vit-large-patch14-336",
    "SigLIP-B/16": "google/siglip-base-patch16-224",
}


def _hub_alias(hub_id: str) -> ModelLoader:
    def load(spec: str, **kwargs) -> ClipBundle:
        from clipadapt.models.hf import load_transformers

        return load_transformers(hub_id, spec=spec, **kwargs)

    load.__doc__ = f"alias of {hub_id}"
    return load


for _alias, _hub_id in HUB_ALIASES.items():
    MODELS.register(_alias, _hub_alias(_hub_id))


def _random_model(preset: str) -> ModelLoader:
    def load(spec: str, **kwargs) -> ClipBundle:
        from clipadapt.models.hf import load_transformers
        from clipadapt.models.random_init import save_random_clip

        with tempfile.TemporaryDirectory(prefix="clipadapt-random-") as tmp:
            bundle = load_transformers(str(save_random_clip(Path(tmp), preset)), spec=spec)
        bundle.fingerprint = f"random:{preset}:seed0"
        bundle.name = spec
        return bundle

    load.__doc__ = f"randomly initialised CLIP ({preset} size, seed 0): speed and plumbing only, chance accuracy"
    return load


for _preset in ("tiny", "vit-b-32"):
    MODELS.register(f"random:{_preset}", _random_model(_preset))


@SCHEMES.register("open_clip")
def _open_clip(argument: str, spec: str, **kwargs) -> ClipBundle:
    """open_clip:ARCH/TAG (optional extra clipadapt[openclip])"""
    from clipadapt.models.openclip import load_open_clip

    return load_open_clip(argument, spec=spec)


def list_models(pattern: str | None = None) -> list[str]:
    return MODELS.names(pattern)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ClipAdaptError(f"unknown device '{device}'; valid choices: auto, cpu, cuda, cuda:N, mps") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(),
               "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not present.get(target.type, True):  # else torch fails later, deep inside a model's .to()
        valid = ["auto", *(name for name, there in present.items() if there)]
        raise ClipAdaptError(f"device '{device}' is not available on this machine; valid choices: {', '.join(valid)}")
    return target


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1 or spec.endswith("/")


def load_model(
    spec: str,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ClipBundle:
    """Load a CLIP-style model with its preprocessing and tokenizer, in eval mode on ``device``."""
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    scheme, sep, argument = spec.partition(":")
    if spec in MODELS:
        bundle = MODELS.get(spec)(spec, **kwargs)
    elif Path(spec).expanduser().is_dir():
        from clipadapt.models.hf import load_transformers

        bundle = load_transformers(spec, spec=spec, **kwargs)
    elif sep and scheme in SCHEMES:
        bundle = SCHEMES.get(scheme)(argument, spec=spec, **kwargs)
    elif sep and "/" not in scheme:
        raise UnknownNameError(
            f"unknown model scheme '{scheme}:' in '{spec}'; valid schemes: {', '.join(SCHEMES.names())}; "
            f"named models: {', '.join(MODELS.names())}"
        )
    elif _looks_like_path(spec):
        raise ClipAdaptError(f"model path '{spec}' does not exist")
    elif "/" in spec:
        from clipadapt.models.hf import load_transformers

        try:
            bundle = load_transformers(spec, spec=spec, **kwargs)
        except ClipAdaptError as e:
            raise ClipAdaptError(f"{e}. Named models: {', '.join(MODELS.names())}") from None
    else:
        raise UnknownNameError(
            f"unknown model '{spec}'; valid choices: {', '.join(MODELS.names())}, a hub id (org/name), "
            f"a local directory, or open_clip:ARCH/TAG"
        )
    bundle.to(resolve_device(str(device)) if not isinstance(device, torch.device) else device)
    return bundle


def listing(pattern: str | None = None) -> list[dict]:
    """Named models as data: name, description, package (hub ids, folders and open_clip:ARCH/TAG work besides)."""
    return MODELS.rows(pattern)


callable_package(__name__, listing)  # clipadapt.models() lists

__all__ = ["ClipBundle", "MODELS", "SCHEMES", "list_models", "load_model", "resolve_device"]
