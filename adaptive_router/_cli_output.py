"""What the command line prints: tables as wide as the terminal, a spinner, a progress bar.

All three use rich (the ``cli`` extra) on a terminal and fall back to plain output without it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["fitting_columns", "print_table", "progress", "waiting"]


class waiting:
    """A spinner on stderr while a live call runs, when stderr is a terminal (rich, the cli extra)."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.live: Any = None

    def __enter__(self) -> None:
        if not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner
        except ImportError:
            print(f"{self.message} ...", file=sys.stderr)
            return
        spinner = Spinner("dots", text=self.message)
        console = Console(file=sys.stderr)
        self.live = Live(spinner, console=console, transient=True, redirect_stdout=False)
        self.live.start()

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()


# --- benchmark ---------------------------------------------------------------------------


class progress:
    """A rich progress bar on stderr for long runs; a no-op when short or rich is absent."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if self.enabled:
            try:
                from rich.console import Console
                from rich.progress import Progress
            except ImportError:
                return lambda done: None
            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            task = self.bar.add_task("replaying", total=self.total)
            return lambda done: self.bar.update(task, completed=done)
        return lambda done: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_table(title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """A table as wide as the terminal (``COLUMNS`` when not a terminal; 80 by default): the
    columns that do not fit, rightmost first, are left out and named below it (``--json`` has all)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the 'cli' extra is absent: say so, and still answer in JSON
        print("(install adaptive-router[cli] for tables; printing JSON)", file=sys.stderr)
        print(json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2))
        return
    console = Console()
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    shown = fitting_columns(columns, cells, console.width)
    table = Table(title=title)
    for i in shown:
        left = columns[i] in ("model", "name", "target")
        table.add_column(columns[i], justify="left" if left else "right", no_wrap=True, overflow="ellipsis")
    for row_cells in cells:
        table.add_row(*(row_cells[i] for i in shown))
    console.print(table)
    hidden = [c for i, c in enumerate(columns) if i not in shown]
    if hidden:
        console.print(
            f"(not shown at {console.width} columns: {', '.join(hidden)}; "
            "a wider terminal or --json has them)"
        )


def fitting_columns(columns: Sequence[str], cells: Sequence[Sequence[str]], width: int) -> list[int]:
    """Indexes of the columns to show: the first two always, then the next ones, in order of
    importance (left to right), up to the first that does not fit.

    A rich table with borders takes one character, plus the cell and three more per column."""
    shown, used = [], 1
    for i, column in enumerate(columns):
        need = max([len(column)] + [len(row[i]) for row in cells]) + 3
        if i >= 2 and used + need > width:
            break
        shown.append(i)
        used += need
    return shown


def as_dict(value: Any) -> dict[str, Any]:
    """A dataclass as a dict, for JSON output."""
    from dataclasses import asdict

    return asdict(value)


def json_ratio(value: float) -> float | None:
    """A ratio to print: None when its reference is zero (NaN is not JSON)."""
    return round(value, 4) if math.isfinite(value) else None


def interval_text(interval: Any) -> str:
    """An estimate and its 95% interval."""
    return f"{interval.value:.4f} [{interval.low:.4f}, {interval.high:.4f}]"


def by_shadow(summary: dict[str, Any]) -> str:
    """An outcome replay's explorations, when they went beside the answers: what they cost."""
    if not summary["shadows"]:
        return ""
    usd = summary["shadow_cost_usd"]
    return f", and {summary['shadows']} times beside it by shadow (${usd:.4f}, in its cost)"
