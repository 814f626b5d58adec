"""Chunked, resumable execution of a search: in-process or on a Dask client.

A search is a list of independent **tasks** (hashable keys: tuples of ints such as
``(start, stop)`` orientation ranges or ``(box, start, stop)``), a function that runs one task
and returns a partial **state** (plain tensors, see :mod:`corrscan.core.stats`), and an exact,
associative, order-independent ``merge`` of two states. :func:`run_tasks` runs the tasks that
are not finished yet, merges their states and, with a :class:`~corrscan.core.checkpoint.
Checkpoint`, saves ``{"done": finished tasks, "state": merged state, **extra}`` atomically at
intervals and once at the end. A killed run restarted with the same inputs loads the checkpoint,
skips the finished tasks and ends with the same merged state as an uninterrupted run, because
every merge is exact.

Scheduling, retries and data movement are Dask's (:func:`corrscan.distributed.map_reduce`);
nothing here retries or moves data by itself.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

from corrscan.core.checkpoint import Checkpoint
from corrscan.core.progress import track
from corrscan.distributed.cluster import get_client, map_reduce
from corrscan.errors import InputError

__all__ = ["checkpoint_path_for", "client_for", "load_progress", "run_tasks"]

State = dict[str, Any]

# keyword arguments of ``Client.map`` (a shared input must not take one of these names)
_RESERVED = {
    "key", "pure", "workers", "retries", "resources", "priority", "allow_other_workers",
    "fifo_timeout", "actor", "actors", "batch_size", "func", "iterables", "annotations",
}  # fmt: skip


def _key(task: Any) -> tuple:
    """Canonical, checkpoint-safe form of a task key (nested tuples of ints/str)."""
    if isinstance(task, (list, tuple)):
        return tuple(_key(t) if isinstance(t, (list, tuple)) else t for t in task)
    return (task,)


def _as_list(task: tuple) -> list:
    return [_as_list(t) if isinstance(t, tuple) else t for t in task]


def checkpoint_path_for(bundle: str | Path) -> Path:
    """Checkpoint file of the search that writes ``bundle``: ``<bundle>.checkpoint.pt``."""
    b = Path(bundle)
    return b.with_name(b.name + ".checkpoint.pt")


@contextlib.contextmanager
def client_for(
    client: Any = None, workers: int | None = None, scheduler: str | None = None
) -> Iterator[Any]:
    """The given client, a new one (``workers`` / ``scheduler``), or ``None`` (in-process)."""
    if client is not None:
        yield client
    elif workers is None and not scheduler:
        yield None
    else:
        with get_client(workers=workers, scheduler=scheduler) as c:
            yield c


def load_progress(
    checkpoint: Checkpoint | None, required: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The saved progress ``{"done": set of task keys, "state": ..., **extra}`` or ``None``.

    ``required`` names extra entries the caller needs (e.g. ``"chunks"``); a checkpoint
    without them, or with malformed task keys, raises :class:`InputError` naming the file.
    """
    if checkpoint is None or not checkpoint.exists():
        return None
    saved = checkpoint.load()
    bad = InputError(
        f"checkpoint {checkpoint.path} does not hold the progress of this kind of search; "
        "delete it to restart"
    )
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("done"), list)
        or "state" not in saved
        or any(k not in saved for k in required)
    ):
        raise bad
    try:
        done = {_key(t) for t in saved["done"]}
        for k in required:
            if k == "chunks":
                saved[k] = [tuple(int(v) for v in t) for t in saved[k]]
    except (TypeError, ValueError):
        raise bad from None
    out = dict(saved)
    out["done"] = done
    return out


def _tagged(task: Any, *, _run: Callable[..., State], **shared: Any) -> dict[str, Any]:
    """Worker side: run one task and tag its state with the task key."""
    return {"tasks": [_as_list(_key(task))], "state": _run(task, **shared)}


def _merge_tagged(
    a: dict[str, Any], b: dict[str, Any], *, _merge: Callable[[State, State], State]
) -> dict[str, Any]:
    return {"tasks": a["tasks"] + b["tasks"], "state": _merge(a["state"], b["state"])}


def run_tasks(
    tasks: Sequence[Hashable],
    run_task: Callable[..., State],
    merge: Callable[[State, State], State],
    *,
    shared: dict[str, Any] | None = None,
    client: Any = None,
    checkpoint: Checkpoint | None = None,
    extra: dict[str, Any] | None = None,
    on_task: Callable[[Any, int], None] | None = None,
    description: str = "chunks",
    progress: bool | None = None,
) -> State:
    """Run every unfinished task, merge the states, checkpoint; return the merged state.

    Parameters
    ----------
    tasks
        Task keys (ints or tuples of ints), in the canonical order.
    run_task
        ``run_task(task, **shared) -> state``; must be picklable for a client (a module-level
        function or a :func:`functools.partial` of one).
    merge
        ``merge(a, b) -> new state``: exact, associative and order independent; must not
        modify its inputs.
    shared
        Inputs every task needs (arrays, configs). With a client they are scattered once.
    client
        A ``dask.distributed.Client`` (:func:`~corrscan.distributed.get_client`), or ``None``
        to run in this process.
    checkpoint
        Saves progress after tasks (at most every ``checkpoint.interval_s``) and at the end;
        an existing checkpoint is resumed (its fingerprint must match).
    extra
        Plain values saved with the progress (e.g. the batch size and chunk list, so a resumed
        run uses the same ones; see :func:`load_progress`).
    on_task
        ``on_task(task, n_done)`` after each task is merged (in-process only; the tests use it
        to interrupt a run).
    """
    keys = [_key(t) for t in tasks]
    if not keys:
        raise InputError("the search space is empty: there is nothing to run")
    if len(set(keys)) != len(keys):
        raise InputError("task keys must be unique")
    shared = dict(shared or {})
    clash = sorted(set(shared) & _RESERVED)
    if clash:
        raise InputError(f"shared input names {clash} clash with Client.map arguments: rename them")
    extra = dict(extra or {})
    saved = load_progress(checkpoint)
    done: set[tuple] = set()
    state: State | None = None
    if saved is not None:
        unknown = saved["done"] - set(keys)
        if unknown:
            raise InputError(
                f"checkpoint {checkpoint.path} lists tasks that are not part of this search "  # type: ignore[union-attr]
                f"({sorted(unknown)[:3]}...); delete it to restart"
            )
        done = set(saved["done"])
        state = saved["state"] if done else None
    todo = [(t, k) for t, k in zip(tasks, keys, strict=True) if k not in done]

    def snapshot(st: State | None, finished: set[tuple]) -> dict[str, Any]:
        return {"done": [_as_list(k) for k in sorted(finished)], "state": st, **extra}

    if client is None:
        for task, key in track(todo, description=description, unit="chunk", enabled=progress):
            part = run_task(task, **shared)
            state = part if state is None else merge(state, part)
            done.add(key)
            if checkpoint is not None:
                st, fin = state, set(done)
                checkpoint.maybe_save(lambda st=st, fin=fin: snapshot(st, fin))
            if on_task is not None:
                on_task(task, len(done))
    elif todo:
        base, base_done = state, set(done)

        def reduce(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            m = _merge_tagged(a, b, _merge=merge)
            if checkpoint is not None:

                def full() -> dict[str, Any]:
                    st = m["state"] if base is None else merge(base, m["state"])
                    return snapshot(st, base_done | {_key(t) for t in m["tasks"]})

                checkpoint.maybe_save(full)
            return m

        out = map_reduce(
            client,
            functools.partial(_tagged, _run=run_task),
            [t for t, _ in todo],
            reduce,
            shared=shared,
            description=description,
        )
        state = out["state"] if base is None else merge(base, out["state"])
        done |= {_key(t) for t in out["tasks"]}
    if done != set(keys):  # pragma: no cover - guarded by construction
        raise InputError("some tasks did not finish")
    assert state is not None
    if checkpoint is not None and todo:
        checkpoint.save(snapshot(state, done))
    return state
