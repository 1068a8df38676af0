"""A live view of stage instances while an executor runs them: stage x fold x seed, its state and node."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table

log = logging.getLogger(__name__)

STATES = ("waiting", "running", "done", "reused", "failed")


@dataclass
class Row:
    label: str
    state: str = "waiting"
    node: str = ""
    started: float = 0.0
    seconds: float = 0.0


class InstanceBoard:
    """Which instance is in which state on which node. Workers report `started`; the driver
    everything else. Under Ray it lives in an actor so that workers on every node can reach it."""

    def __init__(self, labels: list[str]):
        self.rows = {label: Row(label) for label in labels}

    def started(self, label: str, node: str) -> None:
        row = self.rows[label]
        if row.state in ("waiting", "running"):  # a worker's report may arrive after the driver's final one
            row.state, row.node, row.started = "running", node, time.time()

    def finished(self, label: str, state: str, node: str = "") -> None:
        row = self.rows[label]
        row.state, row.node = state, node or row.node
        row.seconds = time.time() - row.started if row.started else 0.0

    def snapshot(self) -> list[Row]:
        return list(self.rows.values())


class ProgressView:
    """Shows a board's rows: a live table on a terminal, one log line per change elsewhere (CI, files)."""

    def __init__(self, title: str):
        self.title = title
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self.seen: dict[str, tuple[str, str]] = {}
        self.handlers: list[logging.Handler] = []

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
            # log lines go above the table instead of through it
            root = logging.getLogger()
            self.handlers, root.handlers = root.handlers, [RichHandler(console=self.console, show_path=False)]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            logging.getLogger().handlers = self.handlers
            self.live.__exit__(None, None, None)

    def update(self, rows: list[Row]) -> None:
        if self.live is not None:
            self.live.update(self.table(rows))
            return
        for row in rows:
            if self.seen.get(row.label) != (row.state, row.node):
                self.seen[row.label] = (row.state, row.node)
                if row.state != "waiting":
                    where = f" on {row.node}" if row.node else ""
                    log.info("%s: %s%s (%s)", row.label, row.state, where, self.counts(rows))

    def table(self, rows: list[Row]) -> Table:
        table = Table(title=f"{self.title}: {self.counts(rows)}")
        for column in ("instance", "state", "node", "seconds"):
            table.add_column(column)
        now = time.time()
        for row in rows:
            seconds = row.seconds if row.state != "running" else now - row.started
            table.add_row(row.label, row.state, row.node, f"{seconds:.0f}" if row.started else "")
        return table

    @staticmethod
    def counts(rows: list[Row]) -> str:
        return ", ".join(f"{n} {state}" for state in STATES if (n := sum(row.state == state for row in rows)))
