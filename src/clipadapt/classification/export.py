"""``clipadapt export RUN OUT``: a finished run as a folder plain transformers loads, without clipadapt.

OUT holds the model (trained changes merged into its weights: LoRA through peft's ``merge_and_unload``) with its
tokenizer and image processor (``save_pretrained``), ``clipadapt_export.json`` (class names, templates, what to call)
and a README.md with the code. Two kinds, chosen by the method (``Method.export_kind``):

* ``text``: the classifier is the text tower (zero-shot runs, a text head, an untrained zero-shot head): transformers'
  ``pipeline("zero-shot-image-classification", model=OUT)`` with the class names and the hypothesis template.
* ``head``: a learned head on the image features: ``head.safetensors`` (weight, bias, scale; the class names in its
  metadata) and a few lines of torch that apply it as the head does.

Methods whose forward does more than a head on CLIP's image features (prompts, adapters, caches) say why they cannot
be exported (``Method.export_refusal``); the exporter never asks which method it has. An oracle run (its template
set chosen on the test split it reports) is refused unless ``--allow-oracle``, and then labelled in README.md,
clipadapt_export.json and head.safetensors' metadata. Nothing is written on refusal, and OUT appears whole or not at
all (staged, then renamed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.experiment import head_templates
from clipadapt.classification.predictors import is_ensemble_config
from clipadapt.classification.zeroshot import ZeroShotExperiment
from clipadapt.config import from_dict
from clipadapt.data import load_dataset
from clipadapt.data.prompts import TemplateSet
from clipadapt.engine.records import METRICS_FILE, ORACLE_LABEL, oracle_source
from clipadapt.engine.rundir import read_run_config
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.io import atomic_write_json, atomic_write_text, staged_directory
from clipadapt.methods import METHODS
from clipadapt.methods.heads import build_head
from clipadapt.models import load_model, resolve_device
from clipadapt.models.bundle import ClipBundle

EXPORT_FILE = "clipadapt_export.json"
HEAD_FILE = "head.safetensors"
README_FILE = "README.md"
HEAD_FORMULA = "logits = scale * normalize(image_features) @ weight.T + bias"


@dataclass
class ExportPlan:
    """What a run becomes: the plain model, its classifier and where they came from."""

    kind: str  # "text" or "head"
    bundle: ClipBundle
    model: nn.Module
    head: nn.Module  # any clipadapt head: ``as_linear()`` gives its weights
    classnames: list[str]
    templates: list[str]
    source: dict


def export_run(run_dir: str | Path, out: str | Path, overwrite: bool = False, device: str | None = None,
               allow_oracle: bool = False) -> dict:
    """Write the run in ``run_dir`` to ``out`` for plain transformers; returns what was written (also saved as
    ``out/clipadapt_export.json``). Refused in one line (ConfigError), with nothing written, for an existing ``out``
    without ``overwrite``, for methods that cannot be expressed as a transformers model, and for an oracle run
    (chosen on the test split it reports) unless ``allow_oracle``: then its README, clipadapt_export.json and head
    metadata carry the oracle label."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"'{out}' already exists; pass --overwrite to replace it")
    refusal = export_refusal(run_dir, allow_oracle)
    if refusal:
        raise (ClipAdaptError if refusal.endswith(INCOMPLETE) else ConfigError)(refusal)
    oracle = oracle_source(run_dir) is not None
    plan = plan_export(run_dir, device)
    if oracle:
        plan.source["oracle"] = ORACLE_LABEL
    pipeline_exact = plan.kind == "text" and len(plan.templates) == 1
    record = {"source_run": str(run_dir), **plan.source, "kind": plan.kind,
              "model_class": type(plan.model).__name__, "classnames": plan.classnames,
              "hypothesis_template": plan.templates[0] if plan.kind == "text" else None,
              "templates": plan.templates, "pipeline_exact": pipeline_exact,
              "head": None if pipeline_exact else HEAD_FILE, "head_formula": None if pipeline_exact else HEAD_FORMULA}
    with staged_directory(out, overwrite=overwrite) as stage:
        plan.bundle.save_pretrained(stage, plan.model)
        if record["head"]:
            _write_head(plan, stage / HEAD_FILE)
        atomic_write_json(stage / EXPORT_FILE, record)
        atomic_write_text(stage / README_FILE, export_readme(record, out))
    record["out"] = str(out)
    record["files"] = sorted(p.name for p in out.iterdir())
    return record


INCOMPLETE = "resume or rerun it first"


def export_refusal(run_dir: str | Path, allow_oracle: bool = False) -> str | None:
    """Why ``run_dir`` cannot be exported, in one line, read from its files alone (no model loads); None if it can."""
    run_dir = Path(run_dir)
    raw = read_run_config(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        return f"run '{run_dir}' is incomplete (no {METRICS_FILE}); {INCOMPLETE}"
    if "stream" in raw:
        return f"'{run_dir}' is a test-time run: it adapted on its test stream and kept no model to export"
    if is_ensemble_config(raw):
        return (f"'{run_dir}' is an ensemble: it averages several models' probabilities, which one transformers "
                f"model cannot express; export its members")
    method_name = raw.get("method")
    refusal = METHODS.get(method_name).method_class.export_refusal if method_name else None
    if refusal:
        return f"{method_name} runs cannot be exported to plain transformers: {refusal}"
    if oracle_source(run_dir) is not None and not allow_oracle:
        return (f"'{run_dir}' is an {ORACLE_LABEL}: what it would export was chosen on the test split it reports; "
                f"re-run it with --set zeroshot.select_on=val (or none), or pass --allow-oracle to export it "
                f"labelled as an oracle")
    return None


def plan_export(run_dir: Path, device: str | None = None) -> ExportPlan:
    """The run read back as an ``ExportPlan``, or a one-line refusal before any model loads where possible."""
    refusal = export_refusal(run_dir, allow_oracle=True)
    if refusal:
        raise (ClipAdaptError if refusal.endswith(INCOMPLETE) else ConfigError)(refusal)
    raw = read_run_config(run_dir)
    method_name = raw.get("method")
    if not method_name:
        return _zero_shot_plan(run_dir, raw, device)
    experiment, dataset, method = load_run(run_dir, device)
    method.eval()
    templates = head_templates(dataset, experiment.train.head_templates)
    source = {"method": method_name, "model": experiment.model.spec, "dataset": dataset.name}
    return ExportPlan(method.export_kind(), method.bundle, method.exported_model(), method.head,
                      list(method.classnames), templates.as_strings(), source)


def _zero_shot_plan(run_dir: Path, raw: dict, device: str | None) -> ExportPlan:
    experiment = from_dict(ZeroShotExperiment, raw)
    record = json.loads((run_dir / METRICS_FILE).read_text())
    templates = list(record["templates"][record["best_template_set"]]["templates"])
    dataset = load_dataset(experiment.data)
    bundle = load_model(experiment.model.spec, device=resolve_device(device or experiment.model.device),
                        revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code)
    head = build_head("zeroshot", bundle, dataset.classnames, TemplateSet(record["best_template_set"], templates))
    source = {"method": "zeroshot", "model": experiment.model.spec, "dataset": dataset.name}
    return ExportPlan("text", bundle, bundle.model, head, list(dataset.classnames), templates, source)


def _write_head(plan: ExportPlan, path: Path) -> None:
    from safetensors.torch import save_file

    from clipadapt.io import atomic_path

    metadata = {"classnames": json.dumps(plan.classnames), "formula": HEAD_FORMULA, **plan.source}
    with atomic_path(path) as tmp:
        save_file(plan.head.as_linear().tensors(), str(tmp), metadata=metadata)


def export_readme(record: dict, out: Path) -> str:
    """The exported folder's README: what it is and the few lines that use it with transformers alone."""
    folder = str(out)
    lines = [f"# {record['method']} run exported by clipadapt", "",
             f"Model `{record['model']}` adapted with `{record['method']}` on `{record['dataset']}` "
             f"(run `{record['source_run']}`); classes: {', '.join(record['classnames'])}.", ""]
    if record.get("oracle"):
        lines += [f"**{record['oracle']}**: what this folder holds was chosen on the test split the run reports, so "
                  "that run's accuracy is an upper bound, not a result (exported with --allow-oracle).", ""]
    if record["kind"] == "text":
        labels = json.dumps(record["classnames"])
        lines += ["The classifier is the text tower: transformers' zero-shot pipeline with these class names and "
                  "template gives the run's predictions.", "", "```python",
                  "from transformers import pipeline", "",
                  f'classifier = pipeline("zero-shot-image-classification", model={folder!r})',
                  f"print(classifier(\"photo.jpg\", candidate_labels={labels}, "
                  f"hypothesis_template={record['hypothesis_template']!r})[0][\"label\"])", "```", ""]
        if not record["pipeline_exact"]:
            lines += [f"The run averaged the text embeddings of {len(record['templates'])} templates "
                      f"({EXPORT_FILE} lists them); the pipeline takes one, so it can differ from the run. "
                      f"`{HEAD_FILE}` holds the averaged class vectors: the code below reproduces the run exactly.",
                      ""]
    if record["head"]:
        lines += [f"`{HEAD_FILE}` holds the classifier as `{HEAD_FORMULA}` on the model's image embedding "
                  "(the class names are in its metadata). With transformers and safetensors only:", "", "```python",
                  "import json", "", "import torch", "from PIL import Image", "from safetensors import safe_open",
                  f"from transformers import AutoImageProcessor, {record['model_class']}", "",
                  f"folder = {folder!r}",
                  f"model = {record['model_class']}.from_pretrained(folder).eval()",
                  "processor = AutoImageProcessor.from_pretrained(folder)",
                  f"with safe_open(f\"{{folder}}/{HEAD_FILE}\", \"pt\") as f:",
                  "    head = {name: f.get_tensor(name) for name in f.keys()}",
                  "    classnames = json.loads(f.metadata()[\"classnames\"])",
                  "image = Image.open(\"photo.jpg\").convert(\"RGB\")",
                  "with torch.no_grad():",
                  "    pixels = processor(images=image, return_tensors=\"pt\")",
                  "    features = model.get_image_features(**pixels).pooler_output",
                  "features = torch.nn.functional.normalize(features, dim=-1)",
                  "logits = head[\"scale\"] * features @ head[\"weight\"].T + head[\"bias\"]",
                  "print(classnames[int(logits.argmax(-1))])", "```", ""]
    return "\n".join(lines)
