"""The ``clipadapt`` command: parse arguments, build a config, call the library, print the result.

Nothing in here does real work; every command is a thin shell over a library function.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from clipadapt.errors import ClipAdaptError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Zero-shot evaluation and adaptation of CLIP-style models, with honest comparisons.",
)
out = Console()
err = Console(stderr=True)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True)
    logging.getLogger("clipadapt").setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)  # hub retries end in our own one-line error
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(func):
    """Turn a ClipAdaptError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ClipAdaptError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


# -- listings -------------------------------------------------------------------------------------------------


@app.command("models")
@user_errors
def models_command(pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'ViT-*'")] = None):
    """List named models and the other accepted model specs."""
    from clipadapt.models import MODELS, SCHEMES

    table = Table("model", "what it is", title="named models")
    for name in MODELS.names(pattern):
        table.add_row(name, MODELS.help(name))
    out.print(table)
    out.print("Also accepted: any transformers CLIP/SigLIP hub id (org/name), a local model folder, "
              + ", ".join(f"{s}:..." for s in SCHEMES.names()) + " (optional extra).")


@app.command("datasets")
@user_errors
def datasets_command():
    """List registered datasets."""
    from clipadapt.data import DATASETS

    table = Table("dataset", "what it is")
    for name, entry in DATASETS.items():
        table.add_row(entry.usage, DATASETS.help(name))
    out.print(table)


@app.command("templates")
@user_errors
def templates_command(name: Annotated[str | None, typer.Argument(help="show the templates of one set")] = None):
    """List prompt template sets, or the templates of one set."""
    from clipadapt.data.prompts import TEMPLATE_SETS

    if name:
        template_set = TEMPLATE_SETS.get(name)
        for template in template_set.as_strings():
            out.print(template, highlight=False)
        return
    table = Table("template set", "templates", "description")
    for set_name, template_set in TEMPLATE_SETS.items():
        table.add_row(set_name, str(len(template_set.templates)), template_set.description)
    out.print(table)


# -- zero-shot ------------------------------------------------------------------------------------------------

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="model spec (see `clipadapt models`)")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="dataset spec (see `clipadapt datasets`)")]


def _split_classes(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")]
    if not any(names):
        raise ClipAdaptError("--classes is empty: give comma-separated class names, e.g. red,green,blue")
    return names


def zero_shot_results_table(record: dict) -> Table:
    selected_on = record.get("selected_on")
    table = Table(title=f"zero-shot: {record['model']} on {record['dataset']} ({record['split']}, "
                        f"n={record['metrics']['n']})")
    table.add_column("template set")
    table.add_column("prompts", justify="right")
    table.add_column("acc1", justify="right")
    table.add_column("acc5", justify="right")
    table.add_column("mean per-class", justify="right")
    show_selection = any(t.get("selection_metrics") for t in record["templates"].values())
    if show_selection:
        table.add_column(f"{selected_on} acc1", justify="right")
    for name, entry in record["templates"].items():
        m = entry["metrics"]
        marker = " *" if name == record["best_template_set"] else ""
        row = [name[:50] + marker, str(len(entry["templates"])), f"{m['acc1']:.4f}", f"{m['acc5']:.4f}",
               f"{m['mean_per_class_acc']:.4f}"]
        if show_selection:
            row.append(f"{entry['selection_metrics']['acc1']:.4f}")
        table.add_row(*row)
    return table


@app.command("zeroshot")
@user_errors
def zeroshot_command(
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    split: Annotated[str | None, typer.Option(help="split to evaluate: train, val, test")] = None,
    templates: Annotated[list[str] | None, typer.Option(
        "--templates", "-t", help="template set name, file of templates, or a template with {}; repeatable")] = None,
    classes: Annotated[str | None, typer.Option(help="comma-separated class names replacing the dataset's")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    config: Annotated[Path | None, typer.Option(help="YAML config (e.g. a run's config.yaml)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value")] = None,
    data_root: Annotated[str | None, typer.Option(help="local copy of a hub dataset")] = None,
    image_column: Annotated[str | None, typer.Option(help="image column (hf: datasets)")] = None,
    label_column: Annotated[str | None, typer.Option(help="label column (hf: datasets)")] = None,
    shots: Annotated[int | None, typer.Option(help="K training images per class")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per batch")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")] = None,
    strict: Annotated[bool | None, typer.Option("--strict/--skip-bad-images",
                                                help="abort on unreadable images")] = None,
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Zero-shot accuracy of a model on a dataset, one row per template set."""
    _setup_logging(verbose)
    from clipadapt.config import load_config
    from clipadapt.runs import ZeroShotExperiment, run_zero_shot

    overrides = list(set_ or [])
    flags = {
        "model.spec": model, "model.device": device, "data.dataset": dataset, "data.split": split,
        "data.root": data_root, "data.image_column": image_column, "data.label_column": label_column,
        "data.shots": shots, "data.batch_size": batch_size, "data.strict": strict, "data.seed": seed,
        "run.seed": seed, "run.out": str(out_dir) if out_dir else None, "run.overwrite": overwrite or None,
    }
    experiment = load_config(ZeroShotExperiment, config, overrides)
    experiment = _apply_flags(experiment, flags)
    if templates:
        experiment.zeroshot.templates = list(templates)
    if classes is not None:
        experiment.data.classes = _split_classes(classes)
    result = run_zero_shot(experiment)
    out.print(zero_shot_results_table(result.record))
    skipped = result.record["skipped_images"]["count"]
    if skipped:
        err.print(f"[yellow]{skipped} unreadable image(s) skipped; see {result.run_dir / 'skipped_images.txt'}")
    out.print(f"run directory: {result.run_dir}", highlight=False)


def _apply_flags(experiment, flags: dict):
    """Command-line flags win over the config file; unset flags leave it alone."""
    from clipadapt.config import apply_overrides, format_overrides

    return apply_overrides(experiment, format_overrides(flags))


# -- training -------------------------------------------------------------------------------------------------


@app.command("methods")
@user_errors
def methods_command(pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'lin*'")] = None):
    """List adaptation methods with their config fields and defaults (set them with --set SECTION.KEY=VALUE)."""
    from clipadapt.config import field_help
    from clipadapt.methods import METHODS

    for name in METHODS.names(pattern):
        entry = METHODS.get(name)
        table = Table("field", "default", "help", title=f"{name}: {METHODS.help(name)}", title_justify="left")
        for key, (default, text) in field_help(entry.config_class).items():
            table.add_row(f"{entry.section}.{key}", str(default), text)
        out.print(table)
    out.print("Shared sections: train.* (see `clipadapt train --help`), data.*, model.*, run.*", highlight=False)


def training_results_table(record: dict) -> Table:
    table = Table(title=f"{record['method']}: {record['model']} on {record['dataset']} ({record['split']}, "
                        f"n={record['metrics']['n']})")
    for column in ("acc1", "acc5", "mean per-class", "trainable params", "% of model", "train time", "best epoch"):
        table.add_column(column, justify="right")
    m, p, c = record["metrics"], record["params"], record["cost"]
    table.add_row(f"{m['acc1']:.4f}", f"{m['acc5']:.4f}", f"{m['mean_per_class_acc']:.4f}", f"{p['trainable']:,}",
                  f"{p['trainable_pct']:.3f}", f"{c['train_time_s']:.1f} s", str(record.get("best_epoch")))
    return table


@app.command("train")
@user_errors
def train_command(
    method: Annotated[str, typer.Argument(help="adaptation method (see `clipadapt methods`)")],
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (e.g. a run's config.yaml)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value, e.g. lora.r=4, "
                                                   "train.epochs=5")] = None,
    shots: Annotated[int | None, typer.Option(help="K training images per class")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of sampling, initialisation and shuffling")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (train.epochs)")] = None,
    data_root: Annotated[str | None, typer.Option(help="local copy of a hub dataset")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")] = None,
    strict: Annotated[bool | None, typer.Option("--strict/--skip-bad-images",
                                                help="abort on unreadable images")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Train an adaptation method; selected on validation, evaluated once on test."""
    _setup_logging(verbose)
    from clipadapt.methods import METHODS
    from clipadapt.reports.results import CONFIG_FILE
    from clipadapt.training import load_experiment, run_training

    METHODS.get(method)
    if resume and config is None and out_dir is not None and (out_dir / CONFIG_FILE).is_file():
        config = out_dir / CONFIG_FILE  # resume with the run's own config; flags may not change it
    flags = {
        "model.spec": model, "model.device": device, "data.dataset": dataset, "data.root": data_root,
        "data.shots": shots, "data.strict": strict, "data.seed": seed, "run.seed": seed,
        "run.out": str(out_dir) if out_dir else None, "run.overwrite": overwrite or None,
        "run.resume": resume or None, "train.epochs": epochs,
    }
    experiment = _apply_flags(load_experiment(method, config, list(set_ or [])), flags)
    try:
        result = run_training(experiment)
    except KeyboardInterrupt:
        from clipadapt.runs import default_run_dir

        run_dir = experiment.run.out or default_run_dir(experiment.model.spec, experiment.data.dataset, method)
        err.print(f"[yellow]interrupted; continue with: clipadapt train {method} --out {run_dir} --resume",
                  highlight=False)
        raise typer.Exit(130) from None
    if not result.main_process:
        return
    out.print(training_results_table(result.record))
    skipped = result.record["skipped_images"]["count"]
    if skipped:
        err.print(f"[yellow]{skipped} unreadable image(s) skipped; see {result.run_dir / 'skipped_images.txt'}")
    out.print(f"run directory: {result.run_dir}", highlight=False)


@app.command("eval")
@user_errors
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    split: Annotated[str, typer.Option(help="split to evaluate: test or val")] = "test",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")] = None,
):
    """Re-evaluate a saved run's weights on a split (writes eval_<split>.json into the run)."""
    _setup_logging()
    from clipadapt.training import evaluate_run

    result = evaluate_run(run_dir, split, device)
    table = Table("run", "method", "split", "n", "acc1", "acc5", "mean per-class", "loss")
    m = result["metrics"]
    table.add_row(str(run_dir), result["method"], split, str(m["n"]), f"{m['acc1']:.4f}", f"{m['acc5']:.4f}",
                  f"{m['mean_per_class_acc']:.4f}", f"{result['loss']:.4f}")
    out.print(table)


# -- comparisons and reports ----------------------------------------------------------------------------------


def _number_list(text: str, what: str, kind: type = int) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ClipAdaptError(f"{what} must be comma-separated {noun}, got '{text}'") from None


@app.command("compare")
@user_errors
def compare_command(
    model: Annotated[list[str], typer.Option("--model", "-m", help="model spec; repeat to compare models")],
    dataset: DatasetOpt = None,
    methods: Annotated[str, typer.Option(help="all, or comma-separated methods (see `clipadapt methods`)")] = "all",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds; acc is reported as mean ± std")] = "0",
    shots: Annotated[int | None, typer.Option(help="K training images per class")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for the runs it applies to: "
                                                   "train.epochs=5, lora.r=4, data.root=...")] = None,
    templates: Annotated[list[str] | None, typer.Option("--templates", "-t", help="zero-shot template sets "
                                                        "(default: the dataset's, simple and clip)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the runs and the report go")] = Path(
        "runs/compare"),
    skip_existing: Annotated[bool, typer.Option(help="keep finished runs, resume interrupted ones")] = False,
    overwrite: Annotated[bool, typer.Option(help="retrain runs that already exist")] = False,
    no_zeroshot: Annotated[bool, typer.Option("--no-zeroshot", help="skip the zero-shot runs")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Zero-shot and every chosen method on one dataset, each a run directory, then one report."""
    _setup_logging(verbose)
    from clipadapt.compare import CompareConfig, run_compare

    if dataset is None:
        raise ClipAdaptError("compare needs --dataset (see `clipadapt datasets`)")
    config = CompareConfig(
        models=list(model), dataset=dataset, methods=[m.strip() for m in methods.split(",") if m.strip()],
        seeds=_number_list(seeds, "--seeds"), shots=shots, overrides=list(set_ or []), templates=list(templates or []),
        out=str(out_dir), skip_existing=skip_existing, overwrite=overwrite, zeroshot=not no_zeroshot, device=device,
    )

    def show(run, status: str) -> None:
        err.print(f"[bold]{run.method}[/] seed {run.seed} on {run.model}: {status}", highlight=False)

    result = run_compare(config, on_run=show)
    if result.report is not None:
        out.print(report_table(result.report))
        out.print(f"report: {result.report.html}  ({result.report.markdown})", highlight=False)
    if result.failed:
        for path, reason in result.failed:
            err.print(f"[red]failed:[/] {path}: {reason}", highlight=False)
        raise typer.Exit(1)


def report_table(report) -> Table:
    """The report's table, narrowed for a terminal (report.md/html have every column)."""
    from clipadapt.reports.report import summary_table

    summary = summary_table(report.rows)
    several_models = len({row.model for row in report.rows}) > 1
    keep = ["model"] * several_models + ["method", "seeds", "acc1", "acc5", "trainable params", "% of model",
                                         "train time (s)"]
    index = [summary.headers.index(name) for name in keep]
    table = Table(title="comparison (test split; mean ± std over seeds)")
    for name in keep:
        table.add_column(name, justify="left" if name in ("model", "method") else "right")
    for row in summary.rows:
        table.add_row(*[row[i] for i in index])
    return table


@app.command("report")
@user_errors
def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories or folders that contain them")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="where report.md/html go "
                                                 "(default: the single folder given)")] = None,
    group: Annotated[bool, typer.Option(help="allow several datasets, one section each")] = False,
):
    """Rebuild or merge reports from run directories (never recomputes a result)."""
    _setup_logging()
    from clipadapt.reports.report import build_report

    if out_dir is None:
        if len(run_dirs) != 1:
            raise ClipAdaptError("several inputs: say where the merged report goes with --out DIR")
        out_dir = run_dirs[0]
    report = build_report(list(run_dirs), out_dir, group=group)
    out.print(report_table(report))
    for run in report.incomplete:
        err.print(f"[yellow]incomplete (no metrics.json):[/] {run.path}", highlight=False)
    out.print(f"report: {report.html}  ({report.markdown})", highlight=False)


# -- your photos, robustness --------------------------------------------------------------------------------


@app.command("predict")
@user_errors
def predict_command(
    paths: Annotated[list[Path], typer.Argument(help="run directories, then image files")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="also zero-shot with this model")] = None,
    classes: Annotated[str | None, typer.Option(help="class names for --model (default: the runs' classes)")] = None,
    templates: Annotated[list[str] | None, typer.Option("--templates", "-t", help="templates for --model")] = None,
    topk: Annotated[int, typer.Option(help="classes shown per run")] = 5,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the bar charts go")] = Path("predictions"),
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")] = None,
):
    """Top-k classes and probabilities of every run for each image, as a table and one bar chart per image."""
    _setup_logging()
    from clipadapt.data.prompts import resolve_template_sets
    from clipadapt.predict import predict_images
    from clipadapt.predictors import load_predictor, zero_shot_predictor
    from clipadapt.reports.results import CONFIG_FILE

    run_dirs = [p for p in paths if p.is_dir() and (p / CONFIG_FILE).is_file()]
    images = [p for p in paths if p not in run_dirs]
    not_runs = [p for p in images if p.is_dir()]
    if not_runs:
        raise ClipAdaptError(f"'{not_runs[0]}' is a directory but not a run directory (no {CONFIG_FILE})")
    if not images:
        raise ClipAdaptError("no image files given: clipadapt predict RUN_DIR... IMAGE...")
    predictors = [load_predictor(p, device) for p in run_dirs]
    if model:
        names = _split_classes(classes) or (predictors[0].classnames if predictors else None)
        if not names:
            raise ClipAdaptError("--model without run directories needs --classes a,b,c")
        sets = resolve_template_sets(list(templates or ["simple"]))
        prompts = [t for template_set in sets for t in template_set.templates]
        predictors.append(zero_shot_predictor(model, names, prompts, device or "auto"))
    results, skipped = predict_images(predictors, images, topk, out_dir)
    for path, reason in skipped:
        err.print(f"[yellow]skipped {path}: {reason}", highlight=False)
    for result in results:
        table = Table("run", *[f"top {i + 1}" for i in range(topk)], title=str(result.image))
        for label, top in result.top.items():
            table.add_row(label, *[f"{name} {p:.3f}" for name, p in top])
        out.print(table)
        out.print(f"bar chart: {result.figure}", highlight=False)
    if not results:
        raise typer.Exit(2)


@app.command("robustness")
@user_errors
def robustness_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories")],
    noise: Annotated[str, typer.Option(help="corruption: gaussian, blur or jpeg")] = "gaussian",
    sigmas: Annotated[str | None, typer.Option("--sigmas", "--levels", help="comma-separated levels: noise "
                                               "sigma, blur radius, or 100 - JPEG quality")] = None,
    seed: Annotated[int, typer.Option(help="noise seed (the same corrupted images for every run)")] = 0,
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")] = None,
):
    """Accuracy under seeded corruptions per run; saved as robustness.json/png in each run, shown in reports."""
    _setup_logging()
    from clipadapt.predictors import load_predictor
    from clipadapt.robustness import CORRUPTIONS, check_levels, evaluate_robustness

    entry = CORRUPTIONS.get(noise)
    levels = check_levels(noise, list(entry.default_levels) if sigmas is None
                          else _number_list(sigmas, "--sigmas", float))
    table = Table("run", *[f"{entry.level_name} {v:g}" for v in levels], title=f"top-1 accuracy under {noise}")
    predictors = [load_predictor(p, device) for p in run_dirs]  # every run loads before the first evaluation
    for predictor in predictors:
        result = evaluate_robustness(predictor, noise, levels, seed, split)
        table.add_row(str(predictor.run_dir), *[f"{a:.4f}" for a in result["accuracy"].values()])
    out.print(table)


# -- efficiency -----------------------------------------------------------------------------------------------


@app.command("bench")
@user_errors
def bench_command(
    model: Annotated[list[str], typer.Option("--model", "-m", help="model spec; repeat for several")],
    batch: Annotated[int, typer.Option(help="images per batch")] = 32,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights for inference")] = "fp32",
    methods: Annotated[str | None, typer.Option(help="all, or comma-separated methods whose training step to "
                                                "time (default: none)")] = None,
    iterations: Annotated[int, typer.Option(help="timed inference batches")] = 10,
    steps: Annotated[int, typer.Option(help="timed training steps per method")] = 3,
    compare_dir: Annotated[Path | None, typer.Option("--compare", help="a compare directory: plot its "
                                                     "accuracies against each model's speed")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="method setting, e.g. lora.r=4")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where bench.json goes")] = Path("runs/bench"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
):
    """Inference images/s, latency p50/p95 and peak memory with and without gradients; training steps per method."""
    _setup_logging()
    from clipadapt.bench import accuracy_vs_speed, run_bench
    from clipadapt.compare import resolve_methods
    from clipadapt.io import atomic_write_json

    names = resolve_methods([m.strip() for m in methods.split(",")]) if methods else []

    def show(row: dict) -> None:
        what = row.get("mode") or row.get("method")
        err.print(f"measured {what} on {row['model']}", highlight=False)

    results = run_bench(list(model), batch, dtype, names, iterations, steps, device, on_result=show,
                        settings=list(set_ or []))
    inference = Table("model", "mode", "images/s", "latency p50 (ms)", "latency p95 (ms)", "peak memory (MB)",
                      "params", title=f"inference, batch {batch}, {dtype}")
    for row in results["inference"]:
        inference.add_row(row["model"], row["mode"], f"{row['images_per_s']:.1f}", f"{row['latency_ms_p50']:.1f}",
                          f"{row['latency_ms_p95']:.1f}", f"{row['peak_mem_mb']:,.0f}", f"{row['params']:,}")
    out.print(inference)
    if results["training"]:
        training = Table("model", "method", "train images/s", "peak memory (MB)", "trainable", "% of model",
                         title=f"training step, batch {batch}")
        for row in results["training"]:
            training.add_row(row["model"], row["method"], f"{row['train_images_per_s']:,.1f}",
                             f"{row['peak_mem_mb']:,.0f}", f"{row['trainable']:,}", f"{row['trainable_pct']:.3f}")
        out.print(training)
    if compare_dir is not None:
        results["accuracy_vs_speed"] = accuracy_vs_speed(results, compare_dir, out_dir / "accuracy_vs_speed.png")
    atomic_write_json(out_dir / "bench.json", results)
    out.print(f"results: {out_dir / 'bench.json'}", highlight=False)


# -- world ----------------------------------------------------------------------------------------------------

world_app = typer.Typer(no_args_is_help=True, help="The built-in offline world: generated scenes and a tiny CLIP.")
app.add_typer(world_app, name="world")


@world_app.command("pretrain")
@user_errors
def world_pretrain_command(
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="write the model here instead of "
                                                 "(re)building the cached world:tiny")] = None,
    seconds: Annotated[float | None, typer.Option(help="time budget; sets the step count from measured speed")] = None,
    steps: Annotated[int | None, typer.Option(help="exact number of optimizer steps")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of weights, scenes and captions")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="recipe override: key=value")] = None,
):
    """Pretrain the tiny world CLIP contrastively on generated image-caption pairs."""
    _setup_logging()
    from clipadapt.config import apply_overrides
    from clipadapt.io import staged_directory
    from clipadapt.world.pretrain import WorldClipRecipe, pretrain_world_clip

    recipe = apply_overrides(WorldClipRecipe(), [f"{k}" for k in (set_ or [])])
    recipe = apply_overrides(recipe, [f"{k}={v}" for k, v in {"steps": steps, "seed": seed}.items() if v is not None])
    if out_dir is None:
        if recipe != WorldClipRecipe() or seconds is not None:
            raise ClipAdaptError("world:tiny always uses the default recipe; write a custom one with --out DIR "
                                 "and use it as --model DIR")
        import json

        from clipadapt.world.models import world_clip_dir

        out_dir = world_clip_dir(rebuild=True)  # same lock, staging and manifest as a first-use build
        summary = json.loads((out_dir / "recipe.json").read_text())
    else:
        with staged_directory(out_dir, overwrite=True) as stage:
            summary = pretrain_world_clip(stage, recipe, seconds=seconds)
    out.print(f"pretrained in {summary['train_time_s']} s, {summary['recipe']['steps']} steps, "
              f"final loss {summary['final_loss']:.3f}; model: {out_dir} (loss curve: {out_dir / 'loss.png'})",
              highlight=False)


@world_app.command("lm")
@user_errors
def world_lm_command():
    """Build (once) and show the cached world:tiny-lm, the caption decoder's starting point."""
    _setup_logging()
    from clipadapt.world.lm import world_lm_dir

    out.print(f"world:tiny-lm: {world_lm_dir()}", highlight=False)


@world_app.command("captions")
@user_errors
def world_captions_command(
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of the cache")] = None,
):
    """Write the COCO-style world:captions dataset (captions_<split>.json + images/)."""
    _setup_logging()
    from clipadapt.io import staged_directory
    from clipadapt.world.caption_data import world_captions_dir, write_caption_dataset

    if out_dir is None:
        path = world_captions_dir()
    else:
        with staged_directory(out_dir, overwrite=True) as stage:
            write_caption_dataset(stage)
        path = out_dir
    out.print(f"world:captions: {path}", highlight=False)


@world_app.command("show")
@user_errors
def world_show_command():
    """Show what the world cache holds and whether each entry's files match its manifest."""
    from clipadapt.world.cache import verify, world_dir

    table = Table("entry", "status", "path")
    root = world_dir()
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and not path.name.startswith("."):
            status = "verified" if verify(path) else "incomplete or corrupt (rebuilt on next use)"
            table.add_row(path.name, status, str(path))
    out.print(table)


# -- demo -----------------------------------------------------------------------------------------------------


@app.command("demo")
@user_errors
def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the demo writes its runs and report")] = Path(
        "runs/demo"),
):
    """Offline demo: every method on the built-in world, robustness, bench, one report (first run pretrains)."""
    _setup_logging()
    from clipadapt.demo import run_demo

    result = run_demo(out_dir, say=lambda message: err.print(message, highlight=False))
    out.print(report_table(result.report))
    for path, reason in result.compare.failed:
        err.print(f"[red]failed:[/] {path}: {reason}", highlight=False)
    out.print(f"bench: {result.bench}", highlight=False)
    out.print(f"report: {result.report.html}", highlight=False)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        sys.exit(e.code)


if __name__ == "__main__":
    main()
