"""``Run``: a run directory read back (``clipadapt.load_run``), with prediction and its report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipadapt.engine.rundir import read_run_config
from clipadapt.engine.runview import RunView
from clipadapt.errors import ClipAdaptError

if TYPE_CHECKING:
    from PIL import Image


class Run(RunView):
    """A run directory: ``.dir``, ``.config``, ``.record`` (metrics.json), ``.metrics``, ``.history``, ``.control``,
    ``.predict(images)``, ``.report()``; shown as a table and its training curve in Jupyter."""

    @property
    def control(self) -> dict[str, Any] | None:
        """Forgetting (``eval.control``): the control dataset's zero-shot accuracy ``before`` and ``after`` training
        and ``kept`` (after / before), from metrics.json; None for a run without a control."""
        return self.record.get("control")

    def predict(self, images: Sequence[str | Path | Image.Image] | str | Path | Image.Image, top_k: int = 5,
                device: str | None = None) -> list[dict[str, float]]:
        """The ``top_k`` classes of each image with their probabilities, best first (paths or PIL images)."""
        from clipadapt.classification.predict import predict_images
        from clipadapt.classification.predictors import load_predictor

        if self.config.get("task") == "captioning":
            raise ClipAdaptError(f"'{self.dir}' is a caption run; caption images with clipadapt.captioning.caption")
        from PIL import Image

        items: list[str | Path | Image.Image] = (
            [images] if isinstance(images, str | Path | Image.Image) else list(images))
        predictor = load_predictor(self.dir, device)
        results, skipped = predict_images([predictor], items, top_k)
        if skipped:
            path, reason = skipped[0]
            raise ClipAdaptError(f"cannot read image '{path}': {reason}")
        return [dict(result.top[predictor.label]) for result in results]

    def report(self, out: str | Path | None = None) -> Path:
        """Write this run's report (``out``, default ``DIR/report``); returns the HTML file."""
        from clipadapt.experiments.report import build_report

        return build_report([self.dir], out if out is not None else self.dir / "report").html


def load_run(path: str | Path) -> RunView:
    """A run directory (any task, complete or interrupted) read back: a ``Run``, or for a caption run a
    ``CaptionRun``; a one-line error if it is not a run directory."""
    if read_run_config(path).get("task") == "captioning":
        from clipadapt.captioning.api import CaptionRun

        return CaptionRun(path)
    return Run(path)
