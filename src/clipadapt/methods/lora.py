"""``lora``: low-rank adapters on the image tower's projections through ``peft`` (Hu et al., 2021); ``lora.towers``
puts them in the text tower too (or only there), with the classifier recomputed through it (``head=text``).

The adapters are injected with ``peft.get_peft_model`` and saved as a standard peft adapter directory, so
``PeftModel.from_pretrained(CLIPModel.from_pretrained(base), run_dir / "weights/adapter")`` loads them without
clipadapt. For evaluation the adapters are merged into the base weights (and the exact base weights restored after).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from torch import nn

from clipadapt.config import option, require_positive
from clipadapt.engine.checkpoint import check_metadata
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_path, staged_directory
from clipadapt.methods.base import Method, MethodConfig, register_method
from clipadapt.models.bundle import ClipBundle
from clipadapt.models.peft_wrap import get_peft_model_quietly

ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
ADAPTABLE = (nn.Linear, nn.Conv2d)


TOWERS = ("vision", "text", "both")


@dataclass
class PeftLoRAConfig(MethodConfig):
    """What every peft-LoRA recipe sets (``lora``, ``clip-lora``); the recipes differ in their defaults."""

    r: int = option(8, help="rank of the update")
    alpha: float = option(16.0, help="scaling: the update is multiplied by alpha / r (alpha / sqrt(r) with rslora)")
    dropout: float = option(0.1, help="dropout on the adapter's input")
    targets: list[str] = option(["q_proj", "v_proj"], help="module names to adapt (matched as the last name parts)")
    towers: str = option("vision", help="where the adapters go: vision, text or both (text and both need "
                                        "head=text, the classifier recomputed through the text tower)")
    rslora: bool = option(False, help="scale the update by alpha / sqrt(r) instead of alpha / r (peft's "
                                      "use_rslora)")
    merge: bool = option(True, help="merge the adapters into the weights for evaluation (faster)")
    lr: float = option(1e-3, help="peak learning rate of the adapters and the head")

    def __post_init__(self) -> None:
        super().__post_init__()
        section = self.section()
        require_positive(self, ("r", "alpha"), f"{section}:")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{section}.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError(f"{section}.targets is empty; e.g. q_proj,v_proj")
        if self.towers not in TOWERS:
            raise ConfigError(f"unknown {section}.towers '{self.towers}'; valid choices: {', '.join(TOWERS)}")
        if self.towers != "vision" and self.head != "text":
            raise ConfigError(f"{section}.towers={self.towers} adapts the text tower, which the classifier only "
                              f"uses with {section}.head=text; set both")


@dataclass
class LoRAConfig(PeftLoRAConfig):
    text: bool = option(False, help="deprecated, read from runs written before lora.towers: true is towers=both")

    def __post_init__(self) -> None:
        if self.text:
            self.towers, self.text = ("both" if self.towers == "vision" else self.towers), False
        super().__post_init__()


def module_names(root: nn.Module, tower: nn.Module) -> dict[str, nn.Module]:
    """Adaptable modules of ``tower``, by their full name inside ``root``."""
    prefix = next(name for name, module in root.named_modules() if module is tower)
    return {f"{prefix}.{name}" if prefix else name: module for name, module in tower.named_modules()
            if isinstance(module, ADAPTABLE)}


def resolve_targets(candidates: dict[str, nn.Module], targets: list[str], where: str) -> list[str]:
    """Full names of the modules matching each target (``q_proj`` or ``encoder.layers.0.self_attn.q_proj``)."""
    chosen = []
    for target in targets:
        matches = [name for name in candidates if name == target or name.endswith("." + target)]
        if not matches:
            available = sorted({name.rsplit(".", 1)[-1] for name in candidates})
            raise ConfigError(f"LoRA target '{target}' matches no module of the {where}; available module names: "
                              f"{', '.join(available) or 'none'}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def lora_targets(config: PeftLoRAConfig, bundle: ClipBundle) -> list[str]:
    """Full names of the modules ``config`` adapts in ``bundle``'s towers; one line naming the model if a target
    matches nothing there (an open_clip text tower has no ``q_proj``: its attention is one ``in_proj`` matrix)."""
    towers = {"vision": ["vision"], "text": ["text"], "both": ["vision", "text"]}[config.towers]
    model, names = bundle.model, []
    for tower in towers:
        where = f"{tower} tower of '{bundle.spec}' ({bundle.info.get('model_type', bundle.backend)} model)"
        module = bundle.vision_tower if tower == "vision" else bundle.text_tower
        names += resolve_targets(module_names(model, module), config.targets, where)
    return names


@register_method("lora", LoRAConfig)
class LoRA(Method):
    """peft LoRA on the vision tower (q_proj, v_proj, r=8, alpha=16 by default), optionally the text tower."""

    export_refusal = None  # the adapters merge into the weights (exported_model)
    changes_towers = True  # the adapters, merged while the control is classified

    def __init__(self, bundle, classnames, config: PeftLoRAConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=lora_targets(config, bundle), use_rslora=config.rslora, bias="none")
        # injects in place; self.model holds the adapters
        self._peft = [get_peft_model_quietly(bundle.model, peft_config)]

    @classmethod
    def check(cls, config: PeftLoRAConfig, bundle: ClipBundle, classnames) -> None:
        lora_targets(config, bundle)

    starts_at_zero_shot = True  # lora_B starts at zero

    def interpolate(self, start, end, alpha):
        """WiSE-FT for LoRA scales the update B A: B moves from zero, A keeps its trained value (interpolating both
        would scale the update by alpha^2-ish, not alpha)."""
        state = super().interpolate(start, end, alpha)
        return {name: end[name] if "lora_A" in name else value for name, value in state.items()}

    @property
    def peft_model(self) -> PeftModel:
        return self._peft[0]

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with super().evaluating():
            if not self.config.merge:
                yield
                return
            base = {name: p.detach().clone() for name, p in self.model.named_parameters() if "base_layer" in name}
            self.peft_model.merge_adapter()
            try:
                yield
            finally:
                self.peft_model.unmerge_adapter()
                with torch.no_grad():  # unmerging subtracts in floating point; restore the exact weights
                    for name, p in self.model.named_parameters():
                        if name in base:
                            p.copy_(base[name])

    def exported_model(self) -> nn.Module:
        """The CLIP model with the adapters merged into its weights and peft's layers replaced by plain ones
        (peft's ``merge_and_unload``); the method holds no adapters afterwards."""
        return self.peft_model.merge_and_unload()

    def save_weights(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with staged_directory(directory / ADAPTER_DIR, overwrite=True) as stage:
            self.peft_model.save_pretrained(str(stage))
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        with atomic_path(directory / HEAD_FILE) as tmp:
            save_file(head, str(tmp), metadata=self.metadata())

    def load_weights(self, directory: Path) -> None:
        check_metadata(directory / HEAD_FILE, self.metadata())
        adapter = directory / ADAPTER_DIR
        if not (adapter / "adapter_model.safetensors").is_file():
            raise ConfigError(f"no peft adapter in '{adapter}'")
        result = set_peft_model_state_dict(self.peft_model, load_peft_weights(str(adapter), device="cpu"))
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(f"adapter '{adapter}' does not fit this model: {result.unexpected_keys[:3]}")
        self.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
