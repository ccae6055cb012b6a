"""Two-stage training: ``--init-from RUN`` starts a method from a finished run.

Copied into the new method before its first step: every trainable weight whose name and shape match a weight of the
finished run, where the run's weights are its trained state, its head, and its image tower as it evaluates (LoRA's
update merged in). So linear-probe -> full-ft with ``head=linear`` starts from the probe (LP-FT, Kumar et al.
2022, the ``full_ft.lp_ft`` option as two runs), lora -> full-ft starts from the merged LoRA weights, lora -> lora
continues the adapters, full-ft -> bitfit starts from the fine-tuned tower's biases. Weights of the run that the new
method does not train (its backbone, for lora after full-ft) are not carried: the new run stays self-contained.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from clipadapt.classification.evaluation import load_run
from clipadapt.data.base import same_classes
from clipadapt.errors import ConfigError

log = logging.getLogger(__name__)


def run_weights(source) -> dict[str, torch.Tensor]:
    """The finished run's weights under the names a method gives them: ``model.<CLIP parameter>`` for the image
    tower as it evaluates, ``head.<...>`` for its classifier, then its own trained state."""
    trained = source.trainable_state()  # LoRA's adapters by name, for a LoRA run that continues them
    merge = getattr(source, "peft_model", None)
    if merge is not None:  # LoRA: fold the update into the weights (this copy of the run is thrown away)
        merge.merge_and_unload()
    weights = {f"model.{name}": p.detach() for name, p in source.bundle.model.named_parameters()}
    weights.update({f"head.{name}": t.detach() for name, t in source.head.state_dict().items()})
    weights.update(trained)
    return weights


def initialise_from_run(method, run_dir: str | Path, dataset, model_spec: str) -> dict:
    """Copy what fits from a finished run into ``method``; returns what was copied (for metrics.json)."""
    experiment, source_dataset, source = load_run(run_dir, str(method.bundle.device))
    if experiment.model.spec != model_spec:
        raise ConfigError(f"--init-from run '{run_dir}' used model {experiment.model.spec}, this run {model_spec}: "
                          "they must match")
    if source_dataset.name != dataset.name:
        raise ConfigError(f"--init-from run '{run_dir}' was trained on {source_dataset.name}, this run on "
                          f"{dataset.name}: they must match")
    same_classes("this run", list(dataset.classnames), f"--init-from run '{run_dir}'", list(source.classnames))
    weights = run_weights(source)
    own = method.trainable_parameters()
    copied, changed, skipped = [], [], []
    with torch.no_grad():
        for name, param in own.items():
            value = weights.get(name)
            if value is not None and value.shape == param.shape:
                value = value.to(param.device, param.dtype)
                if not torch.equal(param, value):  # (pretrained weights the run left alone are copied unchanged)
                    changed.append(name)
                param.copy_(value)
                copied.append(name)
            else:
                skipped.append(name)
    head_state = [k for k in weights if k.startswith("head.")]
    head_trained = [k for k in own if k.startswith("head.")]
    if head_state and head_trained and not any(k.startswith("head.") for k in copied):
        kind = type(source.head).__name__
        raise ConfigError(f"the head of --init-from run '{run_dir}' ({kind}) does not fit this method's head "
                          f"({type(method.head).__name__}); start from it with {method.config.section()}.head="
                          f"{'linear' if kind == 'LinearHead' else 'zeroshot'}")
    if not copied:
        raise ConfigError(f"nothing of --init-from run '{run_dir}' ({experiment.method}) fits this method: no "
                          "trainable weight has a matching name and shape")
    log.info("--init-from %s: copied %d of %d trainable tensors", run_dir, len(copied), len(own))
    return {"run": str(run_dir), "method": experiment.method, "copied": len(copied), "changed": len(changed),
            "not_copied": len(skipped), "changed_parameters": sum(own[k].numel() for k in changed)}
