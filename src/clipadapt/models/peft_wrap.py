"""``peft.get_peft_model`` without the FutureWarning it triggers on transformers 5.

peft reads the model's ``is_gradient_checkpointing``, which transformers 5 deprecated in favour of
``is_activation_checkpointing``; the warning is peft's, not the user's, and printed in every LoRA and prefix run.
"""

from __future__ import annotations

import warnings

from torch import nn


def get_peft_model_quietly(model: nn.Module, config) -> nn.Module:
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
