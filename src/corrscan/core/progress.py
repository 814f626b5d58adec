"""Progress bars for long loops (rich), silent when not attached to a terminal or disabled."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    """``enabled`` if given, else on for an interactive terminal unless ``CORRSCAN_PROGRESS=0``."""
    if enabled is not None:
        return enabled
    env = os.environ.get("CORRSCAN_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def track(
    iterable: Iterable[T],
    *,
    total: float | None = None,
    description: str = "working",
    unit: str = "it",
    scale: float = 1.0,
    enabled: bool | None = None,
    advance: Callable[[T], float] | None = None,
) -> Iterator[T]:
    """Iterate with a rich progress bar showing the rate in ``unit``/s.

    Parameters
    ----------
    iterable
        Items to iterate.
    total
        Total work in ``unit`` (defaults to ``len(iterable) * scale`` when available).
    description
        Label on the left of the bar.
    unit
        Name of the rate unit (e.g. ``"CCG"``).
    scale
        Work per item in ``unit`` (e.g. CCGs per batch) when each item is a fixed amount.
    enabled
        Force on/off; ``None`` decides from the terminal (see :func:`progress_enabled`).
    advance
        Work of each item in ``unit`` for uneven items: ``advance(item)`` is added to the bar
        once the caller has finished the item (replaces ``scale``; give ``total``). E.g. a
        search whose last batch is shorter yields each batch's size and passes
        ``advance=lambda n: n``.
    """
    if not progress_enabled(enabled):
        yield from iterable
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if total is None and advance is None and hasattr(iterable, "__len__"):
        total = len(iterable) * scale  # type: ignore[arg-type]

    class _Rate(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task):  # type: ignore[override]
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.1f} {unit}/s" if speed else f"-- {unit}/s")

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        console=None,
    ) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task, scale if advance is None else float(advance(item)))
