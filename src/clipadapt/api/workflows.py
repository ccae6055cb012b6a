"""The runs and workflows of the command line as Python functions; each command calls one of these.

Settings are keyword arguments, nested (``lora={"r": 4}``) or dotted (``**{"train.epochs": 5}``), validated like
``--set`` (same messages); ``overrides`` takes ``--set`` items as typed. Precedence, as on the command line:
defaults < ``config`` file < ``overrides`` < settings < the named arguments. ``progress=False`` silences the
progress display for the call. Errors are ``ClipAdaptError`` subclasses; nothing here prints or exits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipadapt.api.runs import Run
from clipadapt.config import apply_overrides, as_overrides, format_overrides, given, load_config, yaml_scalar
from clipadapt.engine.runview import RunView
from clipadapt.errors import ClipAdaptError, ConfigError

if TYPE_CHECKING:
    from clipadapt.executors import ExecutorConfig

PathLike = str | Path


@contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    from clipadapt.progress import progress_disabled

    if enabled:
        yield
    else:
        with progress_disabled():
            yield


def _listed(value: str | Iterable[Any] | None) -> list[Any] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str | Path) else list(value)


def _executor(executor: str | ExecutorConfig, address: str | None, cpus_per_run: float | None, gpus_per_run: float,
              slurm: Mapping[str, Any]) -> Any:
    """The grid's ExecutorConfig: ``executor`` given as one, or built from the keyword arguments (the Slurm ones:
    ``partition``, ``time``, ``mem``, ``array_parallelism``, ``slurm_settings`` as ``{"account": "lab"}`` or
    ``["account=lab"]``, ``slurm_cluster``)."""
    from clipadapt.executors import ExecutorConfig

    if isinstance(executor, ExecutorConfig):
        defaults = {"address": None, "cpus_per_run": None, "gpus_per_run": 0.0, "partition": None, "time": None,
                    "mem": None, "array_parallelism": None, "slurm_settings": (), "slurm_cluster": "slurm"}
        given = {"address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run, **slurm}
        given_too = [name for name, value in given.items() if value != defaults[name] and value not in ([], {})]
        if given_too:
            raise ConfigError(f"executor= is an ExecutorConfig, which holds {', '.join(given_too)} too: set them in "
                              f"it, not as keyword arguments beside it")
        return executor
    settings = slurm.get("slurm_settings") or ()
    items = [f"{k}={v}" for k, v in settings.items()] if isinstance(settings, Mapping) else list(settings)
    return ExecutorConfig(executor, address, cpus_per_run, gpus_per_run, partition=slurm.get("partition"),
                          time=slurm.get("time"), mem=slurm.get("mem"),
                          array_parallelism=slurm.get("array_parallelism"), slurm_settings=items,
                          slurm_cluster=slurm.get("slurm_cluster") or "slurm")


def _names(value: str | Sequence[str]) -> list[str]:
    """``"lora,bitfit"`` (as on the command line) or ``["lora", "bitfit"]``, blanks dropped."""
    return [name.strip() for name in (value.split(",") if isinstance(value, str) else value) if name.strip()]


def zeroshot(model: str | None = None, dataset: str | None = None, templates: str | Sequence[str] | None = None,
             split: str | None = None, out: PathLike | None = None, *, classes: Sequence[str] | None = None,
             seed: int | None = None, overwrite: bool = False, device: str | None = None,
             config: PathLike | None = None, overrides: Iterable[str] = (), progress: bool = True,
             **settings: Any) -> Run:
    """Zero-shot accuracy of ``model`` on ``dataset``, one result per template set (``clipadapt zeroshot``)."""
    from clipadapt.classification.zeroshot import ZeroShotExperiment, run_zero_shot

    experiment = load_config(ZeroShotExperiment, config, as_overrides(settings, overrides))
    experiment = apply_overrides(experiment, format_overrides(given({
        "model.spec": model, "model.device": device, "data.dataset": dataset, "data.split": split,
        "data.seed": seed, "run.seed": seed, "run.out": str(out) if out is not None else None,
        "run.overwrite": overwrite or None})))
    if templates:
        experiment.zeroshot.templates = _listed(templates) or []
    if classes is not None:
        experiment.data.classes = list(classes)
    with _progress(progress):
        return Run(run_zero_shot(experiment).run_dir)


def train(method: str, model: str | None = None, dataset: str | None = None, shots: int | None = None,
          seed: int | None = None, out: PathLike | None = None, init_from: PathLike | None = None, *,
          epochs: int | None = None, resume: bool = False, overwrite: bool = False, device: str | None = None,
          config: PathLike | None = None, overrides: Iterable[str] = (), progress: bool = True,
          callbacks: Mapping[str, list[Callable]] | None = None, **settings: Any) -> Run:
    """Train ``method``; chosen on validation, evaluated once on test (``clipadapt train METHOD``).

    ``resume=True`` with ``out`` continues an interrupted run with the run's own config."""
    from clipadapt.classification.experiment import load_experiment
    from clipadapt.classification.testtime_run import refuse_training
    from clipadapt.classification.training import run_training
    from clipadapt.engine.rundir import config_to_resume
    from clipadapt.methods import METHODS

    refuse_training(method)
    METHODS.get(method)
    experiment = load_experiment(method, config_to_resume(out, config, resume), as_overrides(settings, overrides))
    experiment = apply_overrides(experiment, format_overrides(given({
        "model.spec": model, "model.device": device, "data.dataset": dataset, "data.shots": shots,
        "data.seed": seed, "run.seed": seed, "run.out": str(out) if out is not None else None,
        "run.overwrite": overwrite or None, "run.resume": resume or None, "train.epochs": epochs,
        "run.init_from": str(init_from) if init_from is not None else None})))
    with _progress(progress):
        output = run_training(experiment, dict(callbacks) if callbacks else None)
    return Run(output.run_dir, main_process=output.main_process)


def evaluate(run: PathLike | Run, split: str = "test", device: str | None = None) -> dict[str, Any]:
    """Re-evaluate a finished classification run on a split; writes ``eval_<split>.json`` (``clipadapt eval``)."""
    from clipadapt.classification.evaluation import evaluate_run

    return evaluate_run(_dir(run), split, device)


def coop_words(run: PathLike | Run, top: int = 3, device: str | None = None) -> list:
    """The vocabulary words nearest to each learned context vector of a CoOp run (``clipadapt coop-words``)."""
    from clipadapt.classification.evaluation import coop_words as nearest

    return nearest(_dir(run), top, device)


def export(run: PathLike | Run, out: PathLike, overwrite: bool = False, device: str | None = None,
           allow_oracle: bool = False) -> dict[str, Any]:
    """A finished run as a folder plain transformers loads (``clipadapt export``): the merged model with its tokenizer
    and image processor, and either the zero-shot pipeline's class names and template or ``head.safetensors``;
    returns what was written (docs/export.md). An oracle run (chosen on test) is refused unless ``allow_oracle``,
    and then labelled in the folder's README and metadata."""
    from clipadapt.classification.export import export_run

    return export_run(_dir(run), out, overwrite, device, allow_oracle)


def sweep(method: str, grid: Mapping[str, Sequence[Any] | str] | Sequence[str], model: str | None = None,
          dataset: str | None = None, seeds: Sequence[int] = (0,), out: PathLike | None = None, *,
          shots: int | None = None, epochs: int | None = None, init_from: PathLike | None = None,
          skip_existing: bool = False, overwrite: bool = False, device: str | None = None,
          executor: str | ExecutorConfig = "local", address: str | None = None, cpus_per_run: float | None = None,
          gpus_per_run: float = 0.0,
          partition: str | None = None, time: str | None = None, mem: str | None = None,
          array_parallelism: int | None = None, slurm_settings: Mapping[str, Any] | Sequence[str] = (),
          slurm_cluster: str = "slurm",
          config: PathLike | None = None, overrides: Iterable[str] = (),
          progress: bool = True, on_run: Callable[[Any, str], None] | None = None, **settings: Any):
    """Every cell of ``grid`` over ``seeds``, chosen on validation (``train --sweep``): ``{"lora.r": [4, 8]}``
    (Python values), ``{"lora.r": "4,8"}`` or the command line's items ``["lora.r=4,8"]``; the cells run on the
    ``executor`` (local, ray, slurm, or an ``ExecutorConfig``)."""
    from clipadapt.experiments.sweep import SweepConfig, parse_sweep, run_sweep

    if isinstance(grid, Mapping):
        def text(value: Any) -> str:  # strings are YAML as typed on the command line; other values are formatted
            return value if isinstance(value, str) else yaml_scalar(value)

        items = [f"{key}={value if isinstance(value, str) else ','.join(text(v) for v in value)}"
                 for key, value in grid.items()]
    else:
        items = list(grid)
    flags = format_overrides(given({"model.spec": model, "model.device": device, "data.dataset": dataset,
                                    "data.shots": shots, "train.epochs": epochs,
                                    "run.init_from": str(init_from) if init_from is not None else None}))
    config_ = SweepConfig(method, parse_sweep(items), list(seeds), as_overrides(settings, overrides) + flags,
                          str(config) if config is not None else None, str(out) if out is not None else None,
                          skip_existing, overwrite, _executor(executor, address, cpus_per_run, gpus_per_run, {
                              "partition": partition, "time": time, "mem": mem, "array_parallelism": array_parallelism,
                              "slurm_settings": slurm_settings, "slurm_cluster": slurm_cluster}))
    with _progress(progress):
        return run_sweep(config_, on_run=on_run)


def compare(models: str | Sequence[str] | None = None, dataset: str | None = None,
            methods: str | Sequence[str] | None = None, seeds: Sequence[int] | None = None, shots: int | None = None,
            out: PathLike | None = None, *, config: PathLike | None = None, templates: Sequence[str] | None = None,
            zeroshot: bool | None = None, skip_existing: bool = False, overwrite: bool = False, device: str = "auto",
            executor: str | ExecutorConfig = "local", address: str | None = None, cpus_per_run: float | None = None,
            gpus_per_run: float = 0.0, partition: str | None = None, time: str | None = None, mem: str | None = None,
            array_parallelism: int | None = None, slurm_settings: Mapping[str, Any] | Sequence[str] = (),
            slurm_cluster: str = "slurm", overrides: Iterable[str] = (), report: bool = True, progress: bool = True,
            on_run: Callable[[Any, str], None] | None = None, **settings: Any):
    """Zero-shot and every chosen method on one dataset, then one report (``clipadapt compare``); the runs run on
    the ``executor`` (local, ray, slurm, or an ``ExecutorConfig``).

    ``config``: a compare file (``experiments.compare.CompareFile``); the arguments given win over it, and left
    out, they are the file's or the defaults (``methods="all"``, ``seeds=(0,)``, ``out="runs/compare"``, zero-shot
    on). Settings go to the runs whose config has their section (``lora={"r": 4}`` to lora only)."""
    from clipadapt.experiments.compare import load_compare_config, run_compare

    named = given({"models": _listed(models) if models is not None else None, "dataset": dataset,
                   "methods": _names(methods) if methods is not None else None,
                   "seeds": list(seeds) if seeds is not None else None, "shots": shots,
                   "templates": list(templates) if templates else None, "zeroshot": zeroshot,
                   "out": str(out) if out is not None else None})
    compare_config = load_compare_config(config, named, as_overrides(settings, overrides),
                                         skip_existing=skip_existing, overwrite=overwrite, device=device,
                                         executor=_executor(executor, address, cpus_per_run, gpus_per_run, {
                                             "partition": partition, "time": time, "mem": mem,
                                             "array_parallelism": array_parallelism,
                                             "slurm_settings": slurm_settings, "slurm_cluster": slurm_cluster}))
    with _progress(progress):
        return run_compare(compare_config, on_run=on_run, report=report)


def benchmark(model: str, datasets: str | Sequence[str] | None = None, methods: str | Sequence[str] = "linear-probe",
              shots: Sequence[int] | None = None, seeds: Sequence[int] = (1, 2, 3),
              protocol: str | Sequence[str] = "few-shot", out: PathLike = "runs/benchmark", *,
              suite: str | None = None, targets: str | Sequence[str] | None = None, data_root: PathLike | None = None,
              executor: str | ExecutorConfig = "local", address: str | None = None, cpus_per_run: float | None = None,
              gpus_per_run: float = 0.0, partition: str | None = None, time: str | None = None,
              mem: str | None = None, array_parallelism: int | None = None,
              slurm_settings: Mapping[str, Any] | Sequence[str] = (), slurm_cluster: str = "slurm",
              skip_existing: bool = False, overwrite: bool = False, device: str = "auto",
              overrides: Iterable[str] = (), report: bool = True, progress: bool = True,
              on_cell: Callable[[Any, dict[str, int]], None] | None = None, **settings: Any):
    """The few-shot benchmark (``clipadapt benchmark``): zero-shot and every method x shots x seed on each dataset
    of ``suite`` (coop11, world) or ``datasets``, for each ``protocol`` (few-shot, base-to-novel, cross-dataset,
    domain-shift, all; test-time with ``methods`` tda, tpt), on the ``executor`` (local, ray, slurm with ``partition``,
    ``time``, ``mem``, ``array_parallelism``, ``slurm_settings``, or an ``ExecutorConfig``); writes the tables."""
    from clipadapt.experiments.benchmark import BenchmarkConfig, run_benchmark
    from clipadapt.progress import GridProgress

    config = BenchmarkConfig(
        model=model, datasets=_names(datasets or []), suite=suite, methods=_names(methods),
        shots=list(shots) if shots is not None else None, seeds=list(seeds), protocols=_names(protocol),
        targets=_names(targets) if targets else None, out=str(out), overrides=as_overrides(settings, overrides),
        data_root=str(data_root) if data_root is not None else None, device=device, skip_existing=skip_existing,
        overwrite=overwrite, executor=_executor(executor, address, cpus_per_run, gpus_per_run, {
            "partition": partition, "time": time, "mem": mem, "array_parallelism": array_parallelism,
            "slurm_settings": slurm_settings, "slurm_cluster": slurm_cluster}))
    with _progress(progress):
        if on_cell is None:
            from clipadapt.experiments.benchmark import plan

            on_cell = GridProgress(len(plan(config)))
        return run_benchmark(config, on_outcome=on_cell, report=report)


def report(runs: PathLike | Sequence[PathLike], out: PathLike | None = None, group: bool = False,
           task: str | None = None):
    """report.md and a self-contained report.html from run directories (``clipadapt report``); ``task="captioning"``
    reports only the caption runs among them (``clipadapt caption report``)."""
    from clipadapt.captioning.report import build_caption_report
    from clipadapt.experiments.report import build_report

    paths = _run_dirs(runs)
    if out is None:
        if len(paths) != 1:
            raise ClipAdaptError("several inputs: say where the merged report goes with --out DIR")
        out = paths[0]
    if task == "captioning":
        return build_caption_report(list(paths), out)
    if task not in (None, "classification"):
        raise ClipAdaptError(f"unknown task '{task}'; valid choices: classification, captioning")
    return build_report(list(paths), out, group=group)


def compare_captions(methods: str | Sequence[str] = "all", bridges: str | Sequence[str] = "patch-prefix",
                     seeds: Sequence[int] = (0,), model: str | None = None, decoder: str | None = None,
                     dataset: str | None = None, out: PathLike = "runs/caption-compare", *, epochs: int | None = None,
                     skip_existing: bool = False, overwrite: bool = False, device: str | None = None,
                     overrides: Iterable[str] = (), progress: bool = True,
                     on_run: Callable[[str, str], None] | None = None, **settings: Any):
    """Every caption method x bridge x seed as its own run, then one caption report (``clipadapt caption compare``)."""
    from clipadapt.experiments.caption_compare import CaptionCompareConfig, run_caption_compare

    flags = format_overrides(given({"model.spec": model, "model.device": device, "decoder.spec": decoder,
                                    "data.dataset": dataset, "train.epochs": epochs}))
    config = CaptionCompareConfig(methods=_names(methods), bridges=_names(bridges), seeds=list(seeds),
                                  overrides=as_overrides(settings, overrides) + flags, out=str(out),
                                  skip_existing=skip_existing, overwrite=overwrite)
    with _progress(progress):
        return run_caption_compare(config, on_run=on_run)


def wise(run: PathLike | Run, alphas: Sequence[float] = (0, 0.25, 0.5, 0.75, 1), out: PathLike = "runs/wise",
         shift_dataset: str | None = None, shift_root: str | None = None, overwrite: bool = False,
         device: str | None = None, progress: bool = True) -> Run:
    """WiSE-FT: interpolate a run with zero-shot, alpha chosen on val, written as a run (``clipadapt wise``);
    its ``wise.json`` holds every alpha's accuracies."""
    from clipadapt.experiments.wise import run_wise

    with _progress(progress):
        result = run_wise(_dir(run), list(alphas), out, shift_dataset, overwrite, device, shift_root=shift_root)
    return Run(result["run_dir"])


def ensemble(runs: Sequence[PathLike | Run], out: PathLike = "runs/ensemble", weights: str = "uniform",
             label: str | None = None, overwrite: bool = False, device: str | None = None,
             progress: bool = True) -> Run:
    """Class probabilities of finished runs averaged (``weights``: uniform, or val) (``clipadapt ensemble``)."""
    from clipadapt.experiments.ensemble import run_ensemble

    with _progress(progress):
        result = run_ensemble([_dir(r) for r in runs], out, weights, overwrite, device, label)
    return Run(result["run_dir"])


def predict(runs: PathLike | Run | Sequence[PathLike | Run] | None, images: Sequence[Any], top_k: int = 5, *,
            model: str | None = None, classes: Sequence[str] | None = None, templates: Sequence[str] | None = None,
            out: PathLike | None = None, device: str | None = None):
    """Top-k classes of every run (and of ``model``'s zero-shot) per image (``clipadapt predict``).

    Returns ``(predictions, skipped)``: one ``ImagePrediction`` per readable image (``.top[run label]``), and
    ``(path, reason)`` for each unreadable file; ``out`` also draws one bar chart per image there."""
    from clipadapt.classification.predict import predict_images
    from clipadapt.classification.predictors import load_predictor, zero_shot_predictor
    from clipadapt.data.prompts import TemplateSet, resolve_template_sets

    predictors = [load_predictor(run_dir, device) for run_dir in _run_dirs(runs)]
    if model:
        names = list(classes or []) or (predictors[0].classnames if predictors else None)
        if not names:
            raise ClipAdaptError("--model without run directories needs --classes a,b,c")
        sets = resolve_template_sets(list(templates or ["simple"]))
        prompts = TemplateSet("prompts", [t for template_set in sets for t in template_set.templates])
        predictors.append(zero_shot_predictor(model, names, prompts, device or "auto"))
    return predict_images(predictors, list(images), top_k, Path(out) if out is not None else None)


def robustness(runs: PathLike | Run | Sequence[PathLike | Run], corruption: str = "gaussian",
               levels: Sequence[float] | None = None, seed: int = 0, split: str = "test", device: str | None = None,
               progress: bool = True) -> dict[Path, dict[str, Any]]:
    """Accuracy of each run under a seeded corruption per level, saved in each run (``clipadapt robustness``)."""
    from clipadapt.classification.predictors import load_predictor
    from clipadapt.classification.robustness import CORRUPTIONS, check_levels, evaluate_robustness_of_runs

    entry = CORRUPTIONS.get(corruption)
    chosen = check_levels(corruption, list(entry.default_levels) if levels is None else list(levels))
    predictors = [load_predictor(d, device) for d in _run_dirs(runs)]  # every run loads before the first evaluation
    with _progress(progress):
        entries = evaluate_robustness_of_runs(predictors, corruption, chosen, seed, split)  # each image once
    return {Path(p.run_dir or ""): entry for p, entry in zip(predictors, entries, strict=True)}


def bench(models: str | Sequence[str], batch: int = 32, dtype: str = "fp32", methods: str | Sequence[str] = (),
          iterations: int = 10, steps: int = 3, out: PathLike | None = None, *, compare: PathLike | None = None,
          modes: str | Sequence[str] = "all", device: str = "auto", overrides: Iterable[str] = (),
          on_result: Callable[[dict], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Inference speed and memory per model (CLIP-style: the image tower; image classifier: the whole forward) in
    each gradient mode of ``modes`` (``all``, or some of grad_enabled, no_grad, inference_mode), and training steps
    per method; writes ``out/bench.json`` and the parameters-against-speed figure (``clipadapt bench``). With
    ``compare``, also accuracy against speed with its Pearson correlation, and the compare directory's report is
    rebuilt with the bench section; ``out`` defaults to ``compare/bench`` then (else ``runs/bench``), where
    ``clipadapt report`` finds it again."""
    from clipadapt.experiments.bench import MODES, run_bench
    from clipadapt.experiments.bench_report import ACCURACY_FIGURE, PARAMS_FIGURE, accuracy_vs_speed, params_vs_speed
    from clipadapt.experiments.compare import resolve_methods
    from clipadapt.io import atomic_write_json

    wanted = _names(methods)
    names = resolve_methods(wanted) if wanted else []
    chosen = _names(modes)
    compare_dir = Path(compare) if compare is not None else None
    if compare_dir is not None and not compare_dir.is_dir():
        raise ClipAdaptError(f"compare directory '{compare}' does not exist")
    results = run_bench(_listed(models) or [], batch, dtype, names, iterations, steps, device, on_result=on_result,
                        settings=as_overrides(settings, overrides), modes=list(MODES) if chosen == ["all"] else chosen)
    out = Path(out) if out is not None else compare_dir / "bench" if compare_dir is not None else Path("runs/bench")
    if compare_dir is not None:
        results["accuracy_vs_speed"] = accuracy_vs_speed(results, compare_dir, out / ACCURACY_FIGURE)
    params_vs_speed(results, out / PARAMS_FIGURE)
    atomic_write_json(out / "bench.json", results)
    results["bench_json"] = str(out / "bench.json")  # where it went; the report, where one was rebuilt
    if compare_dir is not None:
        from clipadapt.experiments.report import build_report

        inside = out.resolve().is_relative_to(compare_dir.resolve())
        results["report"] = str(build_report([compare_dir] if inside else [compare_dir, out], compare_dir).markdown)
    return results


def demo(out: PathLike = "runs/demo", say: Callable[[str], None] = lambda message: None, captions: bool = True,
         full: bool = False):
    """The ladder offline on the built-in world, with one report (``clipadapt demo``): zero-shot and one method of
    each family, or with ``full`` every registered method and the ResNet baseline (``clipadapt demo --full``)."""
    from clipadapt.experiments.demo import run_demo

    return run_demo(out, say=say, captions=captions, full=full)


def _dir(run: PathLike | Run) -> Path:
    return run.dir if isinstance(run, RunView) else Path(run)


def _run_dirs(runs: PathLike | Run | Sequence[PathLike | Run] | None) -> list[Path]:
    if runs is None:
        return []
    if isinstance(runs, str | Path | RunView):
        return [_dir(runs)]
    return [_dir(run) for run in runs]
