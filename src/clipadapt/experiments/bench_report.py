"""What ``clipadapt bench`` draws and reports: accuracy against speed with its Pearson correlation, parameters
against speed, and the tables of every ``bench.json``.

The accuracy-against-speed figure has one point per row of a compare directory's table (a model and method, mean
test accuracy over its seeds), placed at the inference images/s of the model that produced it: the run's CLIP
model, or, for a method that brings its own image classifier (``baseline.classifier``), that classifier. Rows whose
model was not benchmarked are left out and named; rows without a test accuracy (caption runs) are no points. Speed
is read in the fastest gradient mode measured (``inference_mode``, else ``no_grad``, else ``grad_enabled``).

Pearson's r is ``scipy.stats.pearsonr`` on exactly the plotted points (images/s, accuracy): the covariance over
the product of the standard deviations, with the two-sided p-value of "no linear correlation" (Pearson 1895;
scipy's default, exact under normality). It is given from three points with more than one speed and more than one
accuracy; otherwise it is undefined (two points always give r = +-1) and reported as such.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clipadapt.errors import ClipAdaptError
from clipadapt.reports.report import Figure, Table

SPEED_MODES = ("inference_mode", "no_grad", "grad_enabled")  # the first one measured gives a model's speed
ACCURACY_FIGURE = "accuracy_vs_speed.png"
PARAMS_FIGURE = "params_vs_speed.png"


def speed_mode(results: dict) -> str:
    """The gradient mode whose images/s place the models on the figures."""
    measured = {row["mode"] for row in results["inference"]}
    return next(mode for mode in SPEED_MODES if mode in measured)


def _key(spec: str) -> str:
    """A model spec as bench and a run may both name it: a folder by its resolved path, anything else as is."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def timed_model(row) -> str:
    """The model whose forward gave a compare row's accuracy: the method's own image classifier where its config
    names one (``baseline.classifier``), else the run's CLIP model."""
    from clipadapt.methods import METHODS

    section = METHODS.get(row.method).section if row.method in METHODS else None
    classifier = (row.runs[0].config.get(section) or {}).get("classifier") if section else None
    return str(classifier or row.model)


def pearson(points: list[dict]) -> dict | None:
    """``{"r", "p", "n"}`` of the points' x against y (scipy.stats.pearsonr), or None where r is undefined."""
    from scipy.stats import pearsonr

    xs, ys = [p["x"] for p in points], [p["y"] for p in points]
    if len(points) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    result = pearsonr(xs, ys)
    return {"r": float(result.statistic), "p": float(result.pvalue), "n": len(points)}


def describe_pearson(correlation: dict | None) -> str:
    if correlation is None:
        return "Pearson r: undefined (needs 3 points, with more than one speed and more than one accuracy)"
    return f"Pearson r = {correlation['r']:+.3f} (p = {correlation['p']:.3g}, n = {correlation['n']})"


def accuracy_vs_speed(results: dict, compare_dir: Path, path: Path) -> dict:
    """Each compared row's test accuracy against its model's images/s: the points, their Pearson correlation
    (also in the figure's title) and the rows left out; the figure goes to ``path``."""
    from clipadapt.reports import plots
    from clipadapt.reports.collect import find_runs, table_rows

    mode = speed_mode(results)
    speed = {_key(r["model"]): r for r in results["inference"] if r["mode"] == mode}
    points, left_out = [], []
    for row in table_rows(find_runs([compare_dir])):
        if not row.values("metrics", "acc1"):  # no accuracy to place (caption runs)
            continue
        model = timed_model(row)
        label = f"{Path(model).name} {row.label}"
        if _key(model) not in speed:
            left_out.append(label)
            continue
        accuracy, spread = row.stat("metrics", "acc1")
        points.append({"x": speed[_key(model)]["images_per_s"], "y": accuracy, "yerr": spread, "label": label,
                       "model": model, "method": row.label})
    if not points:
        raise ClipAdaptError(f"no run in '{compare_dir}' used a benchmarked model "
                             f"({', '.join(r['model'] for r in speed.values())})")
    correlation = pearson(points)
    plots.plot_accuracy_scatter(points, path, f"inference images/s ({mode}, log)",
                                f"accuracy vs speed: {describe_pearson(correlation)}")
    return {"mode": mode, "points": points, "pearson": correlation, "left_out": left_out}


def params_vs_speed(results: dict, path: Path) -> None:
    """Each model's parameters in its timed forward against its images/s, one series per gradient mode (log-log)."""
    from matplotlib import colormaps

    from clipadapt.reports import plots

    fig, ax = plots.subplots(figsize=(7, 4.2))
    colours = colormaps["tab10"].colors
    modes = list(dict.fromkeys(row["mode"] for row in results["inference"]))
    for index, mode in enumerate(modes):
        rows = [row for row in results["inference"] if row["mode"] == mode]
        ax.scatter([_params(row) for row in rows], [row["images_per_s"] for row in rows], label=mode,
                   color=colours[index % len(colours)], marker="os^"[index % 3])
    for row in results["inference"]:
        if row["mode"] == speed_mode(results):
            ax.annotate(Path(row["model"]).name, (_params(row), row["images_per_s"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters in the timed forward (log)")
    ax.set_ylabel("inference images/s (log)")
    ax.set_title(f"parameters vs speed, batch {results['batch']}, {results['dtype']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots.save_figure(fig, path)


def _params(row: dict) -> int:
    return int(row.get("forward_params") or row["params"])  # bench.json files from before forward_params


def speed_ratio(row: dict, rows: list[dict]) -> float | None:
    """A row's images/s over its model's with gradients (None when that was not measured)."""
    grad = next((r for r in rows if r["model"] == row["model"] and r["mode"] == "grad_enabled"), None)
    return row["images_per_s"] / grad["images_per_s"] if grad else None


def inference_table(results: dict) -> Table:
    """Model, kind, mode, images/s and its ratio to the same model with gradients, latencies, memory, parameters."""
    table = Table(["model", "kind", "mode", "images/s", "x with grad", "latency p50 (ms)", "latency p95 (ms)",
                   "peak memory (MB)", "params (forward)"], [], [])
    for row in results.get("inference", []):
        ratio = speed_ratio(row, results["inference"])
        table.rows.append([row["model"], row.get("model_kind", "clip"), row["mode"], f"{row['images_per_s']:,.1f}",
                           "" if ratio is None else f"{ratio:.2f}", f"{row['latency_ms_p50']:.1f}",
                           f"{row['latency_ms_p95']:.1f}", f"{row['peak_mem_mb']:,.0f}", f"{_params(row):,}"])
        table.row_keys.append(f"bench-{row['mode']}")
    return table


def bench_report_blocks(paths: list[str | Path], files: Path) -> list:
    """Tables and figures of every ``clipadapt bench`` result (bench.json) found under ``paths``."""
    blocks: list = []
    for path in sorted({p.resolve() for root in map(Path, paths) for p in root.rglob("bench.json")}):
        bench = json.loads(path.read_text())
        blocks += [("h2", f"Efficiency ({path.parent.name}/bench.json)"),
                   ("p", f"Forward of each model on random pixels, batch {bench['batch']}, {bench['dtype']}: the "
                         f"image tower of a CLIP-style model, the whole network of an image classifier; with "
                         f"gradients (grad_enabled), under torch.no_grad and under torch.inference_mode. 'x with "
                         f"grad' is images/s over the same model's with gradients. Peak memory is CUDA peak "
                         f"allocated on a GPU, peak RSS of a fresh process on CPU."),
                   ("table", inference_table(bench))]
        if bench.get("training"):
            training = Table(["model", "method", "train images/s", "peak memory (MB)", "trainable", "% of model"],
                             [], [])
            for row in bench["training"]:
                training.rows.append([row["model"], row["method"], f"{row['train_images_per_s']:,.1f}",
                                      f"{row['peak_mem_mb']:,.0f}", f"{row['trainable']:,}",
                                      f"{row['trainable_pct']:.3f}"])
                training.row_keys.append(f"bench-{row['method']}")
            blocks.append(("table", training))
        blocks += _speed_study_blocks(bench, path.parent, files)
    return blocks


def _speed_study_blocks(bench: dict, folder: Path, files: Path) -> list:
    """Accuracy against speed (its points and Pearson r) and parameters against speed, where bench drew them."""
    blocks: list = []
    study = bench.get("accuracy_vs_speed")
    if isinstance(study, dict):  # older bench.json files kept a bare list of points
        points = Table(["model (timed)", "method", f"images/s ({study['mode']})", "test acc1"], [], [])
        for point in study["points"]:
            points.rows.append([point["model"], point["method"], f"{point['x']:,.1f}", f"{point['y']:.4f}"])
            points.row_keys.append(f"bench-{point['method']}")
        left_out = f" Left out (model not benchmarked): {', '.join(study['left_out'])}." if study["left_out"] else ""
        blocks += [("p", f"Accuracy against speed: {describe_pearson(study['pearson'])}, scipy.stats.pearsonr on "
                         f"the points below, each row's mean test accuracy against the images/s of the model it "
                         f"ran on (a baseline's image classifier).{left_out}"), ("table", points)]
    for name, caption in ((ACCURACY_FIGURE, "Test accuracy against the inference speed of the model each run used."),
                          (PARAMS_FIGURE, "Parameters in each model's timed forward against its images/s.")):
        if (folder / name).is_file():
            target = files / f"{folder.name}-{name}"
            shutil.copyfile(folder / name, target)
            blocks.append(("figure", Figure(target, caption)))
    return blocks
