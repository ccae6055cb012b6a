"""open_clip backend (optional extra ``clipadapt[openclip]``, imported only when an ``open_clip:`` spec is used)."""

from __future__ import annotations

from clipadapt.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess, PreprocessConfig
from clipadapt.errors import ClipAdaptError
from clipadapt.models.bundle import ClipBundle

EXAMPLE_SPEC = "open_clip:ViT-B-32/laion2b_s34b_b79k"
INSTALL = "pip install -c constraints.txt 'clipadapt[openclip]'"


def _open_clip_if_installed():
    try:
        import open_clip
    except ImportError:
        return None
    return open_clip


def _import_open_clip():
    open_clip = _open_clip_if_installed()
    if open_clip is None:
        raise ClipAdaptError(f"open_clip models need the optional extra: {INSTALL}")
    return open_clip


def parse_open_clip_spec(arch_and_tag: str, spec: str) -> tuple[str, str]:
    """``(ARCH, TAG)``; a spec without a pretrained tag is refused (open_clip would build random weights).

    Decided before open_clip is imported where it can be: the refusal needs open_clip only to list the tags."""
    arch, _, tag = arch_and_tag.partition("/")
    arch, tag = arch.strip(), tag.strip()
    if not arch:
        raise ClipAdaptError(f"model '{spec}' names no open_clip architecture; use open_clip:ARCH/TAG, "
                             f"e.g. {EXAMPLE_SPEC}")
    if tag:
        return arch, tag
    open_clip = _open_clip_if_installed()
    if open_clip is None:
        where = f"open_clip.list_pretrained() lists the tags once the extra is installed: {INSTALL}"
    elif arch not in open_clip.list_models():
        where = f"'{arch}' is not an open_clip architecture either; architectures: {', '.join(open_clip.list_models())}"
    else:
        tags = list(open_clip.list_pretrained_tags_by_model(arch))
        where = (f"pretrained tags for {arch}: {', '.join(tags)}" if tags
                 else f"open_clip has no pretrained weights for {arch}")
    raise ClipAdaptError(f"model '{spec}' names no pretrained tag, and open_clip would load random weights; "
                         f"use open_clip:ARCH/TAG, e.g. {EXAMPLE_SPEC}; {where}")


def load_open_clip(arch_and_tag: str, spec: str) -> ClipBundle:
    """``ARCH/TAG`` as in ``open_clip.list_pretrained()``, e.g. ``ViT-B-32/laion2b_s34b_b79k``."""
    arch, tag = parse_open_clip_spec(arch_and_tag, spec)
    open_clip = _import_open_clip()
    if arch not in open_clip.list_models():
        raise ClipAdaptError(f"unknown open_clip architecture '{arch}'; valid choices: "
                             f"{', '.join(open_clip.list_models())}")
    try:
        model = open_clip.create_model(arch, pretrained=tag)
    except RuntimeError as e:
        raise ClipAdaptError(f"open_clip could not load '{arch_and_tag}': {str(e).splitlines()[0]}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = size if isinstance(size, int) else size[0]
    preprocess = ClipPreprocess(PreprocessConfig(
        resize=int(size), crop=(int(size), int(size)),
        mean=tuple(cfg.get("mean", OPENAI_CLIP_MEAN)), std=tuple(cfg.get("std", OPENAI_CLIP_STD)),
        resample=cfg.get("interpolation", "bicubic"),
    ))
    embed_dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") else 0
    return ClipBundle(
        model=model,
        preprocess=preprocess,
        tokenizer=lambda texts: {"input_ids": tokenizer(texts)},
        spec=spec,
        name=arch_and_tag,
        backend="open_clip",
        fingerprint=f"open_clip:{arch_and_tag}",
        image_features_fn=lambda m, x: m.encode_image(x),
        text_features_fn=lambda m, t: m.encode_text(t["input_ids"]),
        vision_tower_fn=lambda m: m.visual,
        text_tower_fn=lambda m: m.transformer,
        logit_scale_fn=lambda m: m.logit_scale.exp(),
        logit_bias_fn=lambda m: getattr(m, "logit_bias", None),
        info={"model_type": "open_clip", "embed_dim": embed_dim, "image_size": int(size)},
    )

