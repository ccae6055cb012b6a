"""What the app shows per run, without Gradio: each run directory becomes a panel that turns a photo into its answer.

* ``ClassifierPanel``: the top-5 classes with probabilities, computed by ``predict_images`` (the function behind
  ``clipadapt predict``, so the page shows the same numbers), and the saliency of the top class over the photo.
* ``ZeroShotPanel``: the same for a zero-shot run, whose class names and template can be edited on the page (ad-hoc
  labels: colours, "human-made" or "nature"); the edited classifier reuses the run's loaded model.
* ``CaptionPanel``: a caption run's caption (``LoadedCaptionRun``, as ``clipadapt caption predict``) and its
  per-word attention strip.

Runs load on first use and stay loaded. ``find_runs`` expands a folder of runs (a compare or benchmark output).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from clipadapt.data.images import ImageLoadError, load_image
from clipadapt.engine.records import CONFIG_FILE, METRICS_FILE
from clipadapt.engine.rundir import read_run_config
from clipadapt.errors import ClipAdaptError, ConfigError

TOP_K = 5
MAX_PIXELS = 40_000_000  # a bigger upload is refused (a photo of 40 MP is already a large phone's)


def read_photo(path: str | Path, name: str | None = None) -> Image.Image:
    """An uploaded file as an RGB image, with ``load_image``'s guards (truncated files, non-images, decompression
    bombs) and a size cap; ``ClipAdaptError`` naming the file otherwise."""
    try:
        return load_image(Path(path), max_pixels=MAX_PIXELS)
    except (ImageLoadError, OSError) as error:
        raise ClipAdaptError(f"cannot read '{name or Path(path).name}' as an image: {error}") from None


def _finished(run_dir: Path) -> bool:
    return (run_dir / CONFIG_FILE).is_file() and (run_dir / METRICS_FILE).is_file()


def _test_time(run_dir: Path) -> bool:
    """A test-time run (``clipadapt testtime``): it kept no classifier, so the page has nothing to load."""
    return "stream" in read_run_config(run_dir)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories: each path is a finished run, or a folder holding finished runs (searched below it, in
    order; test-time runs, which keep no classifier, are passed over). One line naming the path otherwise."""
    if not paths:
        raise ConfigError("no runs given: clipadapt app RUN_OR_FOLDER...")
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"'{path}' does not exist; give a run directory or a folder of runs")
        if (path / CONFIG_FILE).is_file():
            if not (path / METRICS_FILE).is_file():
                raise ConfigError(f"run '{path}' is incomplete (no {METRICS_FILE}); resume or rerun it first")
            found.append(path)
            continue
        inside = sorted(p.parent for p in path.rglob(CONFIG_FILE)
                        if _finished(p.parent) and not _test_time(p.parent)) if path.is_dir() else []
        if not inside:
            raise ConfigError(f"'{path}' is not a run directory and holds no finished runs (no {CONFIG_FILE} with "
                              f"{METRICS_FILE} below it)")
        found += inside
    return list(dict.fromkeys(p.resolve() for p in found))


def _parse_labels(text: str) -> list[str]:
    labels = [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]
    if len(labels) < 2:
        raise ClipAdaptError(f"give at least two class names, separated by commas (got {labels or 'none'})")
    repeated = sorted({name for name in labels if labels.count(name) > 1})
    if repeated:
        raise ClipAdaptError(f"class names must differ; repeated: {', '.join(repeated)}")
    return labels


def _check_template(template: str) -> str:
    template = template.strip()
    if template.count("{}") != 1:
        raise ClipAdaptError(f"the template needs one {{}} where the class name goes, e.g. 'a photo of a {{}}.' (got "
                             f"{template!r})")
    return template


@dataclass
class Panel:
    """One run on the page: ``title`` and ``summary`` (what it is), ``answer(photo)`` (what it says)."""

    run_dir: Path
    device: str | None = None
    config: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        method = self.config.get("method") or ("ensemble" if "ensemble" in self.config else "zeroshot")
        return f"{method} ({self.run_dir.name})"

    @property
    def summary(self) -> str:
        model = self.config.get("model", {}).get("spec", "?")
        dataset = self.config.get("data", {}).get("dataset", "?")
        metrics = self.record.get("metrics", {})
        scores = ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()
                           if name in ("acc1", "CIDEr-D", "cider") and isinstance(value, int | float))
        return f"`{model}` on `{dataset}`" + (f"; test {scores}" if scores else "")

    def answer(self, photo: Image.Image, **settings: Any) -> tuple[Any, Any]:
        raise NotImplementedError


@dataclass
class ClassifierPanel(Panel):
    _predictor: Any = None

    @property
    def predictor(self):
        if self._predictor is None:
            from clipadapt.classification.predictors import load_predictor

            self._predictor = load_predictor(self.run_dir, self.device)
        return self._predictor

    @property
    def classnames(self) -> list[str]:
        return list(self.predictor.classnames)

    def classify(self, predictor, photo: Image.Image) -> tuple[dict[str, float], Image.Image]:
        from clipadapt.classification.predict import predict_images
        from clipadapt.webapp.saliency import model_view, overlay, saliency

        [prediction], _ = predict_images([predictor], [photo], TOP_K)
        top = dict(prediction.top[predictor.label])
        heat, _ = saliency(predictor, photo, predictor.classnames.index(next(iter(top))))
        return top, overlay(model_view(predictor, photo), heat)

    def answer(self, photo: Image.Image, **settings: Any) -> tuple[dict[str, float], Image.Image]:
        """``({class: probability} of the top 5, best first; the saliency of the top class over the photo)``."""
        return self.classify(self.predictor, photo)


@dataclass
class ZeroShotPanel(ClassifierPanel):
    _edited: dict = field(default_factory=dict)

    @property
    def templates(self) -> list[str]:
        """The templates of the run's chosen template set (the first is the page's default)."""
        return list(self.record["templates"][self.record["best_template_set"]]["templates"])

    def answer(self, photo: Image.Image, labels: str | None = None, template: str | None = None,
               **settings: Any) -> tuple[dict[str, float], Image.Image]:
        """With the run's own class names and templates, the run's classifier; with others (``labels`` separated by
        commas, one ``template`` with ``{}``), a classifier built from them on the run's model."""
        names = _parse_labels(labels) if labels and labels.strip() else self.classnames
        edited_template = bool(template and template.strip())
        if names == self.classnames and not edited_template:
            return self.classify(self.predictor, photo)
        chosen = [_check_template(template or "")] if edited_template else self.templates
        key = (tuple(names), tuple(chosen))
        if key not in self._edited:
            from clipadapt.classification.predictors import zero_shot_with
            from clipadapt.engine.zeroshot import build_zero_shot_head

            bundle = self.predictor.bundle
            self._edited = {key: zero_shot_with(bundle, build_zero_shot_head(bundle, names, chosen), names,
                                                f"{self.predictor.label}, edited")}  # one edit kept, not every one
        return self.classify(self._edited[key], photo)


@dataclass
class CaptionPanel(Panel):
    _run: Any = None
    figures: Path | None = None  # where its strip is drawn (the page's scratch folder), one file overwritten

    @property
    def loaded(self):
        if self._run is None:
            from clipadapt.captioning.finished import LoadedCaptionRun

            self._run = LoadedCaptionRun(self.run_dir, self.device)
        return self._run

    def answer(self, photo: Image.Image, **settings: Any) -> tuple[str, str | None]:
        """``(caption, attention strip PNG or None)``: the strip has the photo, then one panel per generated word
        with the decoder's attention over the patches (mean over layers); None for the mapper bridge (no patches)."""
        if not self.loaded.has_attention:
            return self.loaded.caption(photo), None
        if self.figures is None:
            self.figures = Path(tempfile.mkdtemp(prefix="clipadapt-app-"))
        target = self.figures / f"attention-{abs(hash(self.run_dir))}.png"  # Gradio copies it to its own cache
        return self.loaded.caption(photo, target), str(target)


def make_panel(run_dir: Path, device: str | None = None, scratch: Path | None = None) -> Panel:
    config = read_run_config(run_dir)
    if "stream" in config:
        raise ConfigError(f"'{run_dir}' is a test-time run: it adapted on its test stream and kept no classifier to "
                          f"try on a photo; give the zero-shot or trained runs")
    record = json.loads((run_dir / METRICS_FILE).read_text())
    if config.get("task") == "captioning":
        return CaptionPanel(run_dir, device, config, record, figures=scratch)
    if not config.get("method") and "ensemble" not in config:
        return ZeroShotPanel(run_dir, device, config, record)
    return ClassifierPanel(run_dir, device, config, record)
