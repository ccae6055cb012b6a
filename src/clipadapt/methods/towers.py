"""Where the prompt methods reach into a transformers CLIP: the encoders' layers, the text embeddings.

One place that knows the module paths (``vision_model.encoder.layers``, ``text_model.embeddings``,
``text_model.encoder.layers``), so a model without them fails with one clear line instead of an AttributeError deep in
a hook.
"""

from __future__ import annotations

from torch import nn

from clipadapt.errors import ConfigError
from clipadapt.models.bundle import ClipBundle


def vision_layers(bundle: ClipBundle, method: str) -> nn.ModuleList:
    """The transformer layers of the image tower, in order."""
    layers = getattr(getattr(bundle.vision_tower, "encoder", None), "layers", None)
    if bundle.backend != "transformers" or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{method} needs a transformers vision transformer (CLIP or SigLIP checkpoints); "
                          f"'{bundle.spec}' is a {bundle.backend} model")
    return layers


def text_layers(bundle: ClipBundle, method: str) -> nn.ModuleList:
    """The transformer layers of the text tower, in order (CLIP text models only)."""
    text_token_embedding(bundle, method)
    return bundle.text_tower.encoder.layers


def check_layer(layer: int, depth: int, field: str) -> None:
    if not 0 <= layer < depth:
        raise ConfigError(f"{field}={layer} is beyond the model's depth: its vision tower has {depth} layers, "
                          f"so {field} must be between 0 and {depth - 1}")


def text_token_embedding(bundle: ClipBundle, method: str) -> nn.Embedding:
    """The text tower's token embedding table (CLIP text models only)."""
    embedding = getattr(getattr(bundle.text_tower, "embeddings", None), "token_embedding", None)
    if bundle.info.get("model_type") != "clip" or not isinstance(embedding, nn.Embedding):
        raise ConfigError(f"{method} needs a transformers CLIP text tower; '{bundle.spec}' is a "
                          f"{bundle.info.get('model_type', bundle.backend)} model")
    return embedding
