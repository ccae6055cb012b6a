"""``clipadapt report DIR...``: one report from whatever runs are under the given folders.

Caption runs alone get the caption report (``captioning.report``); otherwise each dataset gets the classification
sections (``classification.report``) and, after them, the combined runs (WiSE-FT and ensembles, this layer's own
workflows); ``clipadapt bench`` results found under the folders close the report.
"""

from __future__ import annotations

from pathlib import Path

from clipadapt.captioning.report import build_caption_report, is_caption_run
from clipadapt.classification.report import dataset_sections
from clipadapt.errors import ClipAdaptError
from clipadapt.experiments.bench_report import bench_report_blocks
from clipadapt.experiments.combined_report import combined_blocks
from clipadapt.reports.collect import find_runs
from clipadapt.reports.report import ReportResult, fresh_files_dir, report_intro, write_report


def build_report(paths: list[str | Path], out_dir: str | Path, group: bool = False) -> ReportResult:
    """Collect runs under ``paths`` and write ``out_dir/report.md`` and ``out_dir/report.html``."""
    out_dir = Path(out_dir)
    runs = find_runs(paths)
    if not runs:
        raise ClipAdaptError(f"no run directories under {', '.join(map(str, paths))}")
    captions = [r for r in runs if is_caption_run(r)]
    if captions and len(captions) == len(runs):  # only caption runs: their own report
        return build_caption_report(paths, out_dir)
    runs = [r for r in runs if not is_caption_run(r)]  # mixed: captions get `caption report`
    datasets = sorted({r.dataset for r in runs if r.complete})
    if len(datasets) > 1 and not group:
        counts = ", ".join(f"{d} ({sum(r.dataset == d for r in runs)} runs)" for d in datasets)
        raise ClipAdaptError(f"runs from different datasets cannot share one table: {counts}; pass --group to "
                             f"report each dataset in its own section")
    files = fresh_files_dir(out_dir)
    blocks = report_intro("clipadapt report", "runs", runs, paths,
                          "acc is on the test split, mean ± sample std over seeds; models were selected on "
                          "validation only.")
    all_rows = []
    for index, dataset in enumerate(datasets):
        prefix = f"{index}-" if len(datasets) > 1 else ""
        sections, rows = dataset_sections(runs, dataset, files, prefix)
        blocks += sections
        all_rows += rows
        blocks += combined_blocks([r for r in runs if r.dataset == dataset], files, prefix)
    blocks += bench_report_blocks(paths, files)
    return write_report(out_dir, blocks, all_rows, runs, "clipadapt train ... --resume")
