"""Progress bars: on/off decision and that iteration is never altered."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from corrscan.core import progress


@pytest.mark.parametrize(
    ("env", "expected"), [("0", False), ("false", False), ("", False), ("1", True)]
)
def test_progress_enabled_from_environment(monkeypatch, env, expected):
    monkeypatch.setenv("CORRSCAN_PROGRESS", env)
    assert progress.progress_enabled() is expected
    assert progress.progress_enabled(True) is True  # an explicit choice wins
    assert progress.progress_enabled(False) is False


@pytest.mark.parametrize("enabled", [False, True])
def test_track_yields_every_item_in_order(monkeypatch, enabled):
    # rich writes to a throw-away console so the test output stays clean
    monkeypatch.setattr(
        "rich.progress.get_console", lambda: Console(file=io.StringIO(), force_terminal=True)
    )
    items = [3, 1, 4, 1, 5, 9, 2, 6]
    got = list(progress.track(items, description="t", unit="CCG", scale=2.0, enabled=enabled))
    assert got == items
    gen = (i * i for i in range(5))  # no len(): total unknown
    assert list(progress.track(gen, enabled=enabled)) == [0, 1, 4, 9, 16]


def test_advance_counts_uneven_work(monkeypatch):
    """With ``advance`` the bar counts each item's own work (uneven batches) and ends at the
    total work, not at ``len(items) * scale``."""
    import rich.progress as rp

    monkeypatch.setattr(
        "rich.progress.get_console", lambda: Console(file=io.StringIO(), force_terminal=True)
    )
    done: list[float] = []
    real_advance = rp.Progress.advance

    def spy(self, task_id, advance=1):
        done.append(advance)
        real_advance(self, task_id, advance)

    monkeypatch.setattr(rp.Progress, "advance", spy)
    sizes = [15, 15, 15, 7]  # the last batch is shorter
    got = list(progress.track(sizes, total=52, advance=lambda n: n, scale=15, enabled=True))
    assert got == sizes
    assert done == [15.0, 15.0, 15.0, 7.0] and sum(done) == 52
    done.clear()
    assert list(progress.track(sizes, advance=lambda n: 2 * n, enabled=False)) == sizes
    assert done == []  # disabled: nothing is drawn, items unchanged
