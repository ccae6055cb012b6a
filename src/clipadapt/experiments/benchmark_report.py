"""The benchmark's results, read back from its run directories: ``benchmark.csv`` (one row per cell and target),
and ``benchmark.md`` + ``report.html`` with the tables the papers print.

Accuracies are fractions in the CSV and percentages in the tables (as published). Per dataset: mean ± std over
seeds (population std, as numpy's default). The average column: for every seed, the mean over datasets; then mean ±
std of those (shown when every dataset has that seed). Base-to-novel: the CSV's ``hm`` is each seed's 2BN/(B+N);
the tables give the harmonic mean of the seed-averaged base and novel accuracies, the convention of CoCoOp's and
MaPLe's tables (their average row's HM is HM(mean base, mean novel), not the mean of HMs).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipadapt.engine.records import METRICS_FILE
from clipadapt.io import atomic_write_text
from clipadapt.reports.plots import add_legend, save_figure, series_styles, subplots
from clipadapt.reports.report import Figure, Table, fresh_files_dir, render_html, render_markdown

if TYPE_CHECKING:  # the benchmark imports this module to write its report
    from clipadapt.executors import Outcome
    from clipadapt.experiments.benchmark import BenchCell, BenchmarkConfig, Target

COLUMNS = ["protocol", "dataset", "target", "method", "shots", "seed", "acc1", "base_acc1", "novel_acc1", "hm",
           "ece", "run", "error"]
ZEROSHOT = "zeroshot"


def harmonic_mean(base: float, novel: float) -> float:
    """2BN/(B+N) (CoCoOp); nan when either is missing, 0 when both are 0."""
    if base != base or novel != novel:
        return float("nan")
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def _acc(path: Path, metric: str = "acc1") -> float:
    try:
        return float(json.loads(path.read_text())["metrics"][metric])
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def _cell_error(cell: BenchCell, outcomes: dict[str, Outcome], target: Target | None = None) -> str:
    outcome = outcomes.get(cell.key)
    if outcome is None:
        return ""
    if outcome.failed:
        return outcome.error or "failed"
    if target is not None and isinstance(outcome.result, dict):
        return outcome.result.get("errors", {}).get(target.name, "")
    return ""


def benchmark_rows(config: BenchmarkConfig, cells: list[BenchCell], outcomes: dict[str, Outcome]) -> list[dict]:
    """One row per cell (and per target of a transfer cell), in the plan's order, read from the run directories."""
    rows: list[dict[str, Any]] = []

    def row(protocol: str, cell: BenchCell, target: str, **values: Any) -> None:
        rows.append({"protocol": protocol, "dataset": cell.dataset, "target": target, "method": cell.method,
                     "shots": cell.shots, "seed": "" if cell.method == ZEROSHOT else cell.seed,
                     "acc1": float("nan"), "base_acc1": float("nan"), "novel_acc1": float("nan"),
                     "hm": float("nan"), "ece": float("nan"), "run": cell.run_dir, "error": "", **values})

    for protocol in config.protocols:
        mine = [c for c in cells if protocol in c.protocols]
        for cell in mine:
            own = _acc(Path(cell.run_dir) / METRICS_FILE)
            if protocol == "few-shot":
                row(protocol, cell, cell.dataset, acc1=own, error=_cell_error(cell, outcomes))
            elif protocol == "test-time":  # seed: the stream's
                row(protocol, cell, cell.dataset, acc1=own, ece=_acc(Path(cell.run_dir) / METRICS_FILE, "ece"),
                    error=_cell_error(cell, outcomes))
            elif protocol == "base-to-novel":
                if cell.method == ZEROSHOT:
                    if cell.subsample != "base":
                        continue
                    new = next(c for c in mine if c.method == ZEROSHOT and c.dataset == cell.dataset
                               and c.subsample == "new")
                    novel = _acc(Path(new.run_dir) / METRICS_FILE)
                    error = _cell_error(cell, outcomes) or _cell_error(new, outcomes)
                else:
                    target = next(t for t in cell.targets if t.protocol == protocol)
                    novel = _acc(Path(cell.run_dir) / target.file)
                    error = _cell_error(cell, outcomes, target)
                row(protocol, cell, cell.dataset, base_acc1=own, novel_acc1=novel, hm=harmonic_mean(own, novel),
                    error=error)
            elif cell.method == ZEROSHOT:
                row(protocol, cell, cell.dataset, acc1=own, error=_cell_error(cell, outcomes))
            else:
                row(protocol, cell, cell.dataset, acc1=own, error=_cell_error(cell, outcomes))
                for target in (t for t in cell.targets if t.protocol == protocol):
                    row(protocol, cell, target.name, acc1=_acc(Path(cell.run_dir) / target.file),
                        error=_cell_error(cell, outcomes, target))
    for r in rows:  # a zero-shot transfer row names the source it stands beside
        if r["protocol"] in ("cross-dataset", "domain-shift") and r["method"] == ZEROSHOT:
            r["dataset"] = config.suite_spec.source
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(v, float) and v != v else f"{v:.6f}" if isinstance(v, float) else v)
                         for k, v in r.items()})
    atomic_write_text(path, buffer.getvalue())


@dataclass
class Stat:
    """Seed values of one method on one dataset (or the average over datasets)."""

    values: dict[int | str, float]

    @property
    def mean(self) -> float:
        found = [v for v in self.values.values() if v == v]
        return float(np.mean(found)) if found else float("nan")

    @property
    def std(self) -> float:
        found = [v for v in self.values.values() if v == v]
        return float(np.std(found)) if len(found) > 1 else 0.0

    def text(self) -> str:
        if self.mean != self.mean:
            return "-"
        n = sum(v == v for v in self.values.values())
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}" if n > 1 else f"{100 * self.mean:.1f}"


def stats(rows: list[dict], protocol: str, value: str = "acc1", shots: int | None = None,
          by: str = "dataset") -> dict[tuple[str, str], Stat]:
    """``(method, dataset or target) -> Stat`` over seeds."""
    found: dict[tuple[str, str], Stat] = {}
    for r in rows:
        if r["protocol"] != protocol or (shots is not None and r["method"] != ZEROSHOT and r["shots"] != shots):
            continue
        found.setdefault((r["method"], r[by]), Stat({})).values[r["seed"]] = r[value]
    return found


def average(found: dict[tuple[str, str], Stat], method: str, columns: list[str]) -> Stat:
    """Per seed, the mean over ``columns`` (only seeds every column has)."""
    per = [found.get((method, c), Stat({})).values for c in columns]
    if not per or not all(per):
        return Stat({})
    seeds = set.intersection(*(set(p) for p in per))
    return Stat({s: float(np.mean([p[s] for p in per])) for s in seeds})


def methods_of(rows: list[dict], protocol: str) -> list[str]:
    names = list(dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol))
    return sorted(names, key=lambda m: m != ZEROSHOT)  # zero-shot first, then in the order given


def few_shot_blocks(rows: list[dict], files: Path) -> list:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["protocol"] == "few-shot"))
    methods = methods_of(rows, "few-shot")
    shots = sorted({r["shots"] for r in rows if r["protocol"] == "few-shot" and r["method"] != ZEROSHOT})
    blocks: list = [("h2", "Few-shot: accuracy (%) on each test split, mean ± std over seeds")]
    for k in shots:
        found = stats(rows, "few-shot", shots=k)
        table = [[m] + [found.get((m, d), Stat({})).text() for d in datasets] + [average(found, m, datasets).text()]
                 for m in methods]
        blocks += [("h3", f"{k} shots"), ("table", Table(["method", *datasets, "average"], table))]
    if shots:
        path = files / "accuracy_vs_shots.png"
        plot_shots(rows, datasets, methods, shots, path)
        blocks.append(("figure", Figure(path, "Accuracy against shots per class (mean over seeds, band: ± std); "
                                              "zero-shot dashed")))
    return blocks


def plot_shots(rows: list[dict], datasets: list[str], methods: list[str], shots: list[int], path: Path) -> None:
    panels = [*datasets, "average"] if len(datasets) > 1 else datasets
    columns = min(3, len(panels))
    lines = (len(panels) + columns - 1) // columns
    fig, axes = subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    trained = [m for m in methods if m != ZEROSHOT]
    styles = dict(zip(trained, series_styles(len(trained)), strict=True))
    per_shot = {k: stats(rows, "few-shot", shots=k) for k in shots}
    for ax, panel in zip(axes.flat, panels, strict=False):
        for method in methods:
            points = [(average(per_shot[k], method, datasets) if panel == "average"
                       else per_shot[k].get((method, panel), Stat({}))) for k in shots]
            mean = np.array([100 * p.mean for p in points])
            std = np.array([100 * p.std for p in points])
            if method == ZEROSHOT:
                if mean[0] == mean[0]:
                    ax.axhline(mean[0], color="0.3", linestyle="--", linewidth=1, label="zero-shot")
                continue
            ax.plot(shots, mean, markersize=3, label=method, **styles[method])
            ax.fill_between(shots, mean - std, mean + std, color=styles[method]["color"], alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    add_legend(axes.flat[columns - 1], len(trained) + (ZEROSHOT in methods))  # the top right panel's
    save_figure(fig, path)


def base_to_novel_blocks(rows: list[dict]) -> list:
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["protocol"] == "base-to-novel"))
    methods = methods_of(rows, "base-to-novel")
    base = stats(rows, "base-to-novel", value="base_acc1")
    novel = stats(rows, "base-to-novel", value="novel_acc1")
    table = []
    for dataset in [*datasets, "average"] if len(datasets) > 1 else datasets:
        for m in methods:
            b = average(base, m, datasets) if dataset == "average" else base.get((m, dataset), Stat({}))
            n = average(novel, m, datasets) if dataset == "average" else novel.get((m, dataset), Stat({}))
            hm = harmonic_mean(b.mean, n.mean)
            table.append([dataset, m, b.text(), n.text(), "-" if hm != hm else f"{100 * hm:.1f}"])
    shots = sorted({r["shots"] for r in rows if r["protocol"] == "base-to-novel" and r["method"] != ZEROSHOT})
    return [("h2", "Base-to-novel: accuracy (%) on the base and the novel classes"),
            ("p", f"Trained on the base half of the classes ({', '.join(map(str, shots))} shots), tested on the "
                  "base classes and on the novel ones with a classifier built from their names. HM = 2BN/(B+N) of "
                  "the seed-averaged B and N (CoCoOp's convention); benchmark.csv has each seed's HM. '-' for "
                  "novel: the method's trained state is per class, so it cannot name classes it never saw."),
            ("table", Table(["dataset", "method", "base", "novel", "HM"], table))]


def transfer_blocks(rows: list[dict], protocol: str) -> list:
    mine = [r for r in rows if r["protocol"] == protocol]
    source = mine[0]["dataset"] if mine else ""
    targets = list(dict.fromkeys(r["target"] for r in mine if r["target"] != source))
    methods = methods_of(rows, protocol)
    found = stats(rows, protocol, by="target")
    table = [[m, *(found.get((m, t), Stat({})).text() for t in [source, *targets]), average(found, m, targets).text()]
             for m in methods]
    title = "Cross-dataset transfer" if protocol == "cross-dataset" else "Domain shift"
    return [("h2", f"{title}: trained on {source}, accuracy (%) on each target"),
            ("table", Table(["method", f"{source} (source)", *targets, "average (targets)"], table))]


def test_time_blocks(rows: list[dict]) -> list:
    """Zero-shot and each test-time method on every target: accuracy and ECE (%), mean ± std over stream seeds."""
    mine = [r for r in rows if r["protocol"] == "test-time"]
    targets = list(dict.fromkeys(r["target"] for r in mine))
    methods = methods_of(rows, "test-time")
    seeds = sorted({r["seed"] for r in mine if r["method"] != ZEROSHOT})
    blocks: list = [("h2", "Test-time adaptation (unlabelled test stream)"),
                    ("p", f"Each method classifies a target's test split as a stream without labels, in the order "
                          f"of stream seeds {', '.join(map(str, seeds))} (mean ± std over them; TPT's seed draws "
                          f"its views), adapting on it. Zero-shot: the dataset's own prompt, as in the other "
                          f"protocols; each test-time run also records the zero-shot accuracy of the classifier it "
                          f"started from (TDA: the dataset's CoOp prompt, as its reference; TPT: 'a photo of a "
                          f"{{}}.'). Not comparable with the few-shot rows: no labelled image is used. ECE: 15 bins "
                          f"(Guo et al. 2017).")]
    for value, title in (("acc1", "accuracy (%)"), ("ece", "expected calibration error (%), lower is better")):
        found = stats(rows, "test-time", value, by="target")
        table = [[m, *(found.get((m, t), Stat({})).text() for t in targets), average(found, m, targets).text()]
                 for m in methods]
        blocks += [("p", f"**{title}**"), ("table", Table(["method", *targets, "average"], table))]
    return blocks


def selection_blocks(cells: list[BenchCell]) -> list:
    """What each method chose on the few-shot validation split (read from its runs' metrics.json)."""
    chosen: dict[str, set[str]] = {}
    for cell in cells:
        if cell.method == ZEROSHOT:
            continue
        try:
            record = json.loads((Path(cell.run_dir) / METRICS_FILE).read_text())
        except (OSError, ValueError):
            continue
        selection = record.get("selection", {})
        fields = list(selection.get("chose", []))
        if "chose" not in selection:  # runs from before the record said what it chose
            fields = sorted(k for k in selection if k not in ("on", "val_acc", "val_loss"))
        chosen.setdefault(cell.method, set()).update(fields)
    table = [[m, ", ".join(sorted(f)) or "nothing (val-free)"] for m, f in chosen.items()]
    return [("h2", "What the methods chose on validation"),
            ("p", "Selection uses the few-shot validation split only (min(K, 4) images per class, CoOp's; K for "
                  "prolip-val, ProLIP's); the test split "
                  "is evaluated once per run. Zero-shot uses the dataset's own prompt and chooses nothing."),
            ("table", Table(["method", "chosen on the few-shot validation split"], table))]


def failure_blocks(rows: list[dict]) -> list:
    """Cells without a result, one line per (protocol, dataset, target, method, shots, reason) with its seeds."""
    grouped: dict[tuple, list[str]] = {}
    for r in rows:
        if r["error"]:
            reason = r["error"].splitlines()[0].split(" (run '")[0][:240]
            key = (r["protocol"], r["dataset"], r["target"], r["method"], str(r["shots"]), reason)
            grouped.setdefault(key, []).append(str(r["seed"]))
    if not grouped:
        return []
    return [("h2", "Cells without a result"),
            ("p", "benchmark.csv has every cell's full message and run directory."),
            ("table", Table(["protocol", "dataset", "target", "method", "shots", "seeds", "why"],
                            [[*key[:5], ", ".join(seeds), key[5]] for key, seeds in grouped.items()]))]


def write_benchmark_report(config: BenchmarkConfig, cells: list[BenchCell],
                           outcomes: dict[str, Outcome]) -> tuple[Path, Path, Path]:
    out = Path(config.out)
    rows = benchmark_rows(config, cells, outcomes)
    write_csv(out / "benchmark.csv", rows)
    files = fresh_files_dir(out)
    trained = [] if config.protocols == ["test-time"] else config.methods
    blocks: list = [("h1", f"Benchmark of {config.model}"),
                    ("p", f"{', '.join(config.protocols)}; methods "
                          f"{', '.join(trained + config.test_time_methods)}; seeds "
                          f"{', '.join(map(str, config.seeds))}. Every number is read from a run directory under "
                          f"{out / 'runs'}; benchmark.csv has one row per cell.")]
    for protocol in config.protocols:
        if protocol == "few-shot":
            blocks += few_shot_blocks(rows, files)
        elif protocol == "base-to-novel":
            blocks += base_to_novel_blocks(rows)
        elif protocol == "test-time":
            blocks += test_time_blocks(rows)
        else:
            blocks += transfer_blocks(rows, protocol)
    trained_cells = [c for c in cells if c.method != ZEROSHOT and "test-time" not in c.protocols]
    blocks += (selection_blocks(trained_cells) if trained_cells else []) + failure_blocks(rows)
    atomic_write_text(out / "benchmark.md", render_markdown(blocks, out))
    atomic_write_text(out / "report.html", render_html(blocks))
    return out / "benchmark.csv", out / "benchmark.md", out / "report.html"
