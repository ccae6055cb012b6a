"""A linear layer rewritten as ``U diag(S) V^T`` from the SVD of its pretrained weight, with only ``S`` trained
(singular-value fine-tuning: Sun et al., NeurIPS 2022; CLIP-SVD, Koleilat et al., 2025).

No maintained library does this, so the layer is ours. peft (0.21) has no tuner that trains the singular values of
the pretrained weights themselves with their singular vectors frozen: AdaLoRA adds a new ``P diag(lambda) Q`` update
whose P and Q start random and train; PiSSA (LoRA's ``init_lora_weights="pissa"``) starts LoRA's A and B at the top
singular vectors and trains A and B; OSF trains U, S and V of the minor singular subspace; TinyLoRA trains a small
vector projected into a rank-2 SVD space; SVFT (a sparse M between U and V, whose diagonal variant is this) is not
in peft.

The SVD runs once, in float64, on the weight's device; U, S and V^T are then stored in the weight's dtype, so the
rebuilt weight equals the original up to that dtype's rounding. The weight is rebuilt in float32 (outside autocast)
at every forward pass in training (one matmul per layer, cheaper than the reference's two factor matmuls per token)
and once for a whole evaluation (``merged``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class SVDLinear(nn.Module):
    """``y = x (U diag(S) V^T)^T + b``: U (out x r) and V^T (r x in) frozen, S (r = min(out, in)) trained, the
    bias the original layer's (frozen)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.U = nn.Parameter(u.to(weight.dtype).contiguous(), requires_grad=False)
        self.S = nn.Parameter(s.to(weight.dtype).contiguous())
        self.Vh = nn.Parameter(vh.to(weight.dtype).contiguous(), requires_grad=False)
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._merged: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.S.numel()

    def rebuilt_weight(self) -> torch.Tensor:
        """U diag(S) V^T in float32 (outside autocast), cast to the layer's dtype."""
        with torch.autocast(self.U.device.type, enabled=False):
            weight = (self.U.float() * self.S.float()) @ self.Vh.float()
        return weight.to(self.U.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self._merged if self._merged is not None else self.rebuilt_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def merge(self, merged: bool) -> None:
        """Rebuild the weight once and keep it (``True``), or rebuild it at every call again (``False``)."""
        with torch.no_grad():
            self._merged = self.rebuilt_weight().detach() if merged else None

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the rebuilt weight and the bias."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.U.device, dtype=self.U.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.rebuilt_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``name`` (a dotted path inside ``root``) is."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def decompose(root: nn.Module, names: list[str]) -> dict[str, SVDLinear]:
    """Replace each named ``nn.Linear`` of ``root`` by its ``SVDLinear``; returns them by name."""
    layers = {}
    for name in names:
        layers[name] = SVDLinear(root.get_submodule(name))
        replace_module(root, name, layers[name])
    return layers


def recompose(root: nn.Module, names: list[str]) -> None:
    """Replace each named ``SVDLinear`` of ``root`` by a plain ``nn.Linear`` with its rebuilt weight."""
    for name in names:
        replace_module(root, name, root.get_submodule(name).to_linear())


@contextmanager
def merged(layers: list[SVDLinear]) -> Iterator[None]:
    """Each layer's weight rebuilt once for the block (evaluation), then rebuilt at every call again."""
    for layer in layers:
        layer.merge(True)
    try:
        yield
    finally:
        for layer in layers:
            layer.merge(False)
