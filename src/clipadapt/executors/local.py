"""The local executor: cells run in this process, one after another, in the order submitted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clipadapt.executors.base import Cell, Executor, Outcome, call_cell, register_executor


@register_executor("local")
class LocalExecutor(Executor):
    """This process, one cell after another (the default; nothing to install)."""

    def __init__(self, config, out=None, token: str = "") -> None:
        super().__init__(config, out, token)
        self._queue: list[tuple[str, Cell, Any]] = []
        self._running = 0

    def submit(self, key: str, cell: Cell, argument: Any) -> None:
        self._queue.append((key, cell, argument))

    def outcomes(self) -> Iterator[Outcome]:
        while self._queue:
            key, cell, argument = self._queue.pop(0)
            self._running = 1
            self.on_start(key)
            outcome = call_cell(key, cell, argument, self.threads(), self.claim(key))
            self._running = 0
            yield outcome

    def running(self) -> int:
        """One while a cell runs, and between cells while any is left (the next starts at once)."""
        return 1 if self._running or self._queue else 0

    def queued(self) -> int:
        return max(0, len(self._queue) - (0 if self._running else 1))
