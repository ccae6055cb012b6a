"""Where in a photo a run looked: a saliency map of its top class, for any run the app shows.

Gradient x input (Simonyan et al. 2014, "Deep Inside Convolutional Networks", with the input product of Shrikumar et
al. 2016): the gradient of the top class's logit with respect to the normalised pixels, times the pixels, summed in
absolute value over the colour channels. It needs nothing from the method but a differentiable ``pixels -> logits``,
so zero-shot, heads, LoRA, prompts and ensembles get the same kind of map. Where a method's forward pass blocks the
gradient (a frozen tower run under ``no_grad``), occlusion stands in: the drop of the top class's probability when a
patch of a ``grid x grid`` lattice is greyed out (Zeiler and Fergus 2014), one batch of forward passes.

The map is smoothed over 4 x 4 pixel cells, scaled to [0, 1] by its 99th percentile and drawn over the photo with the
``inferno`` colour map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipadapt.classification.predictors import Predictor

SHOWN = 320  # pixels of the longer side of the drawn map


def gradient_saliency(predictor: Predictor, pixels: torch.Tensor, target: int) -> torch.Tensor | None:
    """(H, W) gradient x input of class ``target`` for normalised ``pixels`` (1, 3, H, W); None when no gradient
    reaches the pixels."""
    pixels = pixels.to(predictor.device).clone().requires_grad_(True)
    try:
        with torch.enable_grad(), predictor.context():
            logits = predictor.logits(pixels)
            if not logits.requires_grad:
                return None
            (gradient,) = torch.autograd.grad(logits[0, target], pixels, allow_unused=True)
    except RuntimeError:  # a tensor made in inference mode on the way (a cached head): no gradient through it
        return None
    if gradient is None or not torch.any(gradient != 0):
        return None
    return (gradient * pixels.detach()).abs().sum(1)[0].float().cpu()


@torch.no_grad()
def occlusion_saliency(predictor: Predictor, pixels: torch.Tensor, target: int, grid: int = 7) -> torch.Tensor:
    """(grid, grid) drop of class ``target``'s probability with each patch set to the mean (0 after normalisation)."""
    _, _, height, width = pixels.shape
    rows, cols = np.linspace(0, height, grid + 1).astype(int), np.linspace(0, width, grid + 1).astype(int)
    occluded = pixels.repeat(grid * grid, 1, 1, 1)
    for k in range(grid * grid):
        i, j = divmod(k, grid)
        occluded[k, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = 0
    base = predictor.probabilities(pixels)[0, target]
    dropped = torch.cat([predictor.probabilities(chunk)[:, target] for chunk in occluded.split(16)])
    return (base - dropped).clamp_min(0).reshape(grid, grid).float()


def model_view(predictor: Predictor, image: Image.Image) -> Image.Image:
    """The photo as the model sees it: resized and cropped by its preprocessing (what the map is drawn over)."""
    return Image.fromarray(predictor.preprocess.to_uint8(image).permute(1, 2, 0).numpy())


def saliency(predictor: Predictor, image: Image.Image, target: int) -> tuple[np.ndarray, str]:
    """``(map, kind)``: the saliency of class ``target`` in [0, 1] over ``model_view(image)``, and ``"gradient"``
    or ``"occlusion"``."""
    pixels = predictor.preprocess(image).unsqueeze(0)
    found, kind = gradient_saliency(predictor, pixels, target), "gradient"
    if found is None:
        found, kind = occlusion_saliency(predictor, pixels, target), "occlusion"
    size = pixels.shape[-2:]
    found = found[None, None]
    if kind == "gradient":  # pixel-level gradients are speckled: average over small cells, then back to size
        found = F.interpolate(F.avg_pool2d(found, 4, ceil_mode=True), size=size, mode="bilinear")
    else:
        found = F.interpolate(found, size=size, mode="bilinear")
    values = found[0, 0].numpy()
    top = float(np.percentile(values, 99)) or float(values.max()) or 1.0
    return np.clip(values / top, 0, 1), kind


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """``heat`` (values in [0, 1]) in the inferno colour map over ``image`` (the model's view), the longer side
    ``SHOWN`` pixels."""
    from matplotlib import colormaps

    scale = SHOWN / max(image.size)
    shown = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                        Image.Resampling.BICUBIC)
    colours = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    heat_image = Image.fromarray(colours).resize(shown.size, Image.Resampling.BILINEAR)
    return Image.blend(shown, heat_image, alpha)
