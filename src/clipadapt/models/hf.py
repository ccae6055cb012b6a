"""transformers backend: CLIP (and SigLIP) checkpoints from the hub or a local directory."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from clipadapt.errors import ClipAdaptError
from clipadapt.models.bundle import ClipBundle

SUPPORTED_MODEL_TYPES = ("clip", "siglip")


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def fingerprint_local(path: Path) -> str:
    """Content-ish identity of a local checkpoint: config text plus weight files' names, sizes and mtimes."""
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _offline_hint(model_id: str) -> str:
    return (
        f"could not load '{model_id}' from the Hugging Face hub (no network access, or no such model). "
        f"To work offline, download it where the hub is reachable "
        f"(`hf download {model_id} --local-dir ./models/{model_id.split('/')[-1]}`), copy the folder here "
        f"and pass its path: --model ./models/{model_id.split('/')[-1]}"
    )


def load_transformers(
    source: str,
    spec: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ClipBundle:
    """Load a transformers CLIP-style model, its tokenizer and its preprocessing from a hub id or directory."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    local = Path(source).expanduser()
    is_local = local.is_dir()
    if is_local and not (local / "config.json").is_file():
        raise ClipAdaptError(f"'{source}' is a directory but not a transformers model (no config.json in it)")
    location = str(local) if is_local else source
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except OSError:
        if is_local:
            raise ClipAdaptError(f"'{source}' has an unreadable config.json") from None
        raise ClipAdaptError(_offline_hint(source)) from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ClipAdaptError(
            f"'{source}' is a '{model_type}' model, not a CLIP-style model; supported types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        model = AutoModel.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(location, **kwargs)
    except OSError as e:
        if is_local:
            raise ClipAdaptError(f"'{source}' is incomplete: {str(e).splitlines()[0]}") from None
        raise ClipAdaptError(_offline_hint(source)) from None
    model.eval()

    text_config = config.text_config
    max_length = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                     int(text_config.max_position_embeddings))
    siglip = model_type == "siglip"

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        if siglip:  # SigLIP was trained with max-length padding and has no attention mask
            out = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                            return_tensors="pt")
            return {"input_ids": out["input_ids"]}
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    def save(model_to_save: torch.nn.Module, path: Path) -> None:
        model_to_save.save_pretrained(path)
        tokenizer.save_pretrained(path)
        image_processor.save_pretrained(path)

    if is_local:
        fingerprint = f"local:{fingerprint_local(local)}"
    else:
        fingerprint = f"hub:{source}@{getattr(config, '_commit_hash', None) or revision or 'main'}"
    projection = getattr(config, "projection_dim", None) or text_config.hidden_size
    return ClipBundle(
        model=model,
        preprocess=ClipPreprocess(PreprocessConfig.from_image_processor(image_processor)),
        tokenizer=tokenize,
        spec=spec or source,
        name=str(local.resolve()) if is_local else source,
        backend="transformers",
        fingerprint=fingerprint,
        image_features_fn=lambda m, x: _pooled(m.get_image_features(pixel_values=x)),
        text_features_fn=lambda m, t: _pooled(m.get_text_features(**t)),
        vision_tower_fn=lambda m: m.vision_model,
        text_tower_fn=lambda m: m.text_model,
        logit_scale_fn=lambda m: m.logit_scale.exp(),
        logit_bias_fn=(lambda m: m.logit_bias) if siglip else (lambda m: None),
        save_fn=save,
        # CLIP: get_image_features is visual_projection(vision_model(x).pooler_output); SigLIP's head is inside
        pooled_image_features_fn=None if siglip else (lambda m, x: m.vision_model(pixel_values=x).pooler_output),
        token_names_fn=lambda ids: [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids)],
        info={"model_type": model_type, "embed_dim": int(projection),
              "image_size": int(config.vision_config.image_size)},
    )


def hub_available() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True")


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub can be reached, found out in seconds at most (once per process): not with HF_HUB_OFFLINE,
    else a TCP connection to its endpoint (or to the configured proxy). A failing download would otherwise spend
    half a minute in huggingface_hub's retries before saying so."""
    import socket
    import urllib.request
    from urllib.parse import urlparse

    if not hub_available():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = urlparse(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def cached_hub_snapshot(model_id: str, revision: str | None = None) -> Path | None:
    """The local hub cache's folder of ``model_id`` (a model folder like any other), if it has been downloaded."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(config).parent if isinstance(config, str) else None


def describe_checkpoint(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
