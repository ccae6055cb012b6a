"""Named local checkpoints: names that resolve to a folder of transformers files, registered by a plug-in.

The world registers ``world:tiny-lm`` (a caption decoder) and ``world:tiny-resnet`` (an image classifier for the
baseline), both built on first use; code that loads a decoder or a classifier asks this registry before trying
the name as a hub id or a folder, so it never needs to know the world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipadapt.registry import Registry


@dataclass(frozen=True)
class NamedCheckpoint:
    kind: str  # what it is: "decoder" (a causal LM) or "classifier" (an image classifier)
    locate: Callable[[], Path]  # the folder (built or verified on the call)
    fingerprint: Callable[[Path], str]  # identifies the weights in the folder (recorded with a run)


CHECKPOINTS: Registry[NamedCheckpoint] = Registry("named checkpoint")


def named_checkpoints(kind: str) -> list[str]:
    """The registered names of one kind, sorted."""
    return [name for name, entry in CHECKPOINTS.items() if entry.kind == kind]


def named_checkpoint(spec: str, kind: str) -> NamedCheckpoint | None:
    """The registered checkpoint called ``spec`` if it is of ``kind``, else None."""
    if spec in CHECKPOINTS and CHECKPOINTS.get(spec).kind == kind:
        return CHECKPOINTS.get(spec)
    return None
