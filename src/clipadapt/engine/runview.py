"""A run directory read back, for any task: config, record, metrics, history, and an inline view in Jupyter.

Everything comes from the directory's files (config.yaml, metrics.json, history.csv), so a run written by the
command line, by Python or on another machine reads back the same. ``clipadapt.Run`` adds prediction and reports
(classification); ``clipadapt.captioning.CaptionRun`` adds captioning images.
"""

from __future__ import annotations

import base64
import html
import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipadapt.engine.records import METRICS_FILE, ORACLE_LABEL, is_oracle
from clipadapt.engine.rundir import read_run_config
from clipadapt.errors import ClipAdaptError

if TYPE_CHECKING:
    import pandas

HISTORY_FILE = "history.csv"


class RunView:
    """A run directory: ``.dir``, ``.config``, ``.record`` (metrics.json), ``.metrics``, ``.history``; shown as a
    table and its training curve in Jupyter."""

    def __init__(self, path: str | Path, main_process: bool = True) -> None:
        self.dir = Path(path)
        self.config: dict[str, Any] = read_run_config(self.dir)
        self.main_process = main_process  # False in the other processes of a multi-process run

    def __repr__(self) -> str:
        state = f"acc1 {self.metrics.get('acc1', float('nan')):.4f}" if self.complete else "incomplete"
        return f"{type(self).__name__}('{self.dir}', {self.method}, {state})"

    @property
    def complete(self) -> bool:
        """metrics.json exists: the run finished (it is written last)."""
        return (self.dir / METRICS_FILE).is_file()

    @cached_property
    def record(self) -> dict[str, Any]:
        """metrics.json: metrics, params, cost, seed, selection, config and environment."""
        if not self.complete:
            raise ClipAdaptError(f"run '{self.dir}' is incomplete (no {METRICS_FILE}); resume or rerun it first")
        return json.loads((self.dir / METRICS_FILE).read_text())

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.record["metrics"])

    @property
    def method(self) -> str:
        if self.complete:
            return str(self.record.get("method"))
        return str(self.config.get("method") or ("ensemble" if "ensemble" in self.config else "zeroshot"))

    @property
    def history(self) -> pandas.DataFrame:
        """history.csv (one row per epoch, or per step of a closed-form search) as a DataFrame; empty if none."""
        import pandas

        path = self.dir / HISTORY_FILE
        return pandas.read_csv(path) if path.is_file() else pandas.DataFrame()

    def _repr_html_(self) -> str:
        rows: list[tuple[str, Any]] = [("run", str(self.dir)), ("method", self.method)]
        if self.complete:
            record = self.record
            rows += [("model", record.get("model")), ("dataset", record.get("dataset")),
                     ("split", record.get("split"))]
            rows += [(name, f"{value:.4f}" if isinstance(value, float) else value)
                     for name, value in record["metrics"].items()]
            params = record.get("params", {})
            chosen_on = (record.get("selection") or {}).get("on", record.get("selected_on", "-"))
            rows += [("trainable params", f"{params.get('trainable', 0):,}"),
                     ("chosen on", f"{chosen_on}: {ORACLE_LABEL}" if is_oracle(record) else chosen_on)]
        else:
            rows.append(("state", "incomplete: no metrics.json yet"))
        table = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
        out = [f"<table>{table}</table>"]
        curve = self.dir / "curves.png"
        if curve.is_file():
            data = base64.b64encode(curve.read_bytes()).decode()
            out.append(f"<img alt='training curves' style='max-width:640px' src='data:image/png;base64,{data}'>")
        return "\n".join(out)
