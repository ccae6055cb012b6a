"""What a run chose, and on what: the log behind metrics.json's ``selection``.

Every choice a run makes among candidates (the epoch the engine keeps, a linear probe's C, Tip-Adapter's alpha and
beta, ProLIP's lr and lambda, a template set, WiSE-FT's alpha, an ensemble's weights) goes through
``Selections.choose``, which picks the best-scoring candidate and remembers what it chose, on which split, among how
many candidates and on how many images. metrics.json's ``selection`` is built from that log (``Selections.record``),
never written by a method: a run that chooses nothing records nothing, and one that chooses is recorded whatever its
declared recipe says. One candidate is no choice (nothing is recorded).

The record (a public schema: fields are added, never renamed)::

    {"on": "val" | "none" | "test",          # where the choices were made; "test" only for a labelled oracle
     "chose": ["epoch", "C"],                 # the names of the choices, in order
     "choices": [{"name": "C", "value": 0.3, "split": "val", "images": 13, "candidates": 9,
                  "val_acc": 0.77, "val_loss": 0.5}, ...],
     "validation": {"split": "val", "images": 13} | {"split": null, "reason": "..."},
     "C": 0.3, "epoch": 4, "val_acc": 0.77, "val_loss": 0.5}   # each choice's value and the last one's scores, flat
                                                               # (a joint choice, "alpha,beta", by its parts)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
Score = tuple[float, ...] | float


@dataclass
class Choice:
    """One choice among ``candidates``, made by scores on ``split`` (``images`` of it)."""

    name: str
    value: Any
    split: str
    images: int
    candidates: int
    scores: dict[str, float] = field(default_factory=dict)  # the chosen candidate's (val_acc, val_loss...)

    def as_record(self) -> dict[str, Any]:
        out = asdict(self)
        return {**{k: v for k, v in out.items() if k != "scores"}, **self.scores}


class Selections:
    """The choices of one run, in the order they were made."""

    def __init__(self) -> None:
        self.choices: list[Choice] = []
        self.validation: dict[str, Any] | None = None  # what validation the run had (set by whoever owns the data)
        self._prefixes: list[str] = []

    def choose(self, name: str, candidates: Sequence[T], score: Callable[[T], Score], *, split: str, images: int,
               value: Callable[[T], Any] | None = None, scores: Callable[[T], dict[str, float]] | None = None) -> T:
        """The candidate with the highest ``score`` (the first among equals), recorded as a choice when there were
        two or more. ``value`` names the chosen candidate in the record (default: the candidate itself), ``scores``
        gives its scores on ``split`` (val_acc, val_loss...)."""
        if not candidates:
            raise ValueError(f"nothing to choose the {name} from")
        best = max(candidates, key=score)  # max keeps the first of equal scores
        if len(candidates) > 1:
            self.add(Choice(name, value(best) if value else best, split, int(images), len(candidates),
                            dict(scores(best)) if scores else {}))
        return best

    def add(self, *choices: Choice) -> None:
        """Choices made elsewhere (the engine's kept epoch, an incremental search); the current stage's prefix is
        put in front of their names."""
        prefix = "".join(f"{p}." for p in self._prefixes)
        for choice in choices:
            self.choices.append(Choice(prefix + choice.name, choice.value, choice.split, choice.images,
                                       choice.candidates, dict(choice.scores)))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Choices inside are named ``<name>.<choice>`` (2sfs's ``stage1.epoch``)."""
        self._prefixes.append(name)
        try:
            yield
        finally:
            self._prefixes.pop()

    @contextmanager
    def discarded(self) -> Iterator[None]:
        """Choices made inside are not recorded: a search over whole trainings (each grid cell keeping its best
        epoch) trains the chosen candidate again outside, and that training's choices are the run's."""
        start = len(self.choices)
        try:
            yield
        finally:
            del self.choices[start:]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.choices]

    @property
    def on(self) -> str:
        """Where the choices were made: val, none (nothing chosen) or test (an oracle)."""
        if not self.choices:
            return "none"
        return "test" if any(c.split == "test" for c in self.choices) else "val"

    def record(self, **extra: Any) -> dict[str, Any]:
        """metrics.json's ``selection`` (module docstring); ``extra`` fields describe, they choose nothing."""
        out: dict[str, Any] = {"on": self.on, "chose": self.names, "choices": [c.as_record() for c in self.choices]}
        if self.validation is not None:
            out["validation"] = dict(self.validation)
        for choice in self.choices:  # a joint choice's value ({"alpha": .., "beta": ..}) by its parts
            out.update(choice.value if isinstance(choice.value, dict) else {choice.name: choice.value})
        if self.choices:
            out.update(self.choices[-1].scores)
        for key, value in extra.items():
            out.setdefault(key, value)
        return out


NO_VALIDATION = ("the method chooses nothing and the dataset has no validation split: every training image trains, "
                 "nothing is validated")


def describe_validation(val: Any, chooses: bool = True) -> dict[str, Any]:
    """The ``validation`` of a record: the validation split a run had (its size and, for a val carved out of train,
    where from) and, for a run that chooses nothing, that it only drew the curve; or that there was none."""
    if val is None:
        return {"split": None, "reason": NO_VALIDATION}
    out: dict[str, Any] = {"split": "val", "images": len(val)}
    if getattr(val, "carved_from", None):
        out["carved_from"] = val.carved_from
    if not chooses:
        out["used_for"] = "the validation curve only: nothing is chosen on it"
    return out


def chosen_epoch(record: dict[str, Any], best_epoch: int) -> int | None:
    """The epoch a run chose on validation, to mark on its curves; None where it chose none (it kept the last)."""
    return best_epoch if "epoch" in record.get("selection", {}).get("chose", []) else None
