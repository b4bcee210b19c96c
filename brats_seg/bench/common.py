"""Shared benchmark plumbing: the one timing harness, worker pools, result tables.

Every benchmark times its contenders with `alternate`: each contender runs a block of calls in
turn, round after round (A A, B B, A A, B B, ...), so that load from other users of a shared
machine hits every contender alike instead of landing on whichever happened to run during it.
"""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping


@dataclass(frozen=True)
class Call:
    """One timed call: its round, its wall seconds, and what the contender returned."""

    round: int
    seconds: float
    value: Any


def alternate(contenders: Mapping[str, Callable[[], Any]], rounds: int, block: int = 1,
              before_block: Callable[[str], None] | None = None,
              sync: Callable[[], None] | None = None) -> dict[str, list[Call]]:
    """Every timed call of every contender: `block` calls each, in turn, `rounds` times over.

    before_block(name) runs untimed before each of a contender's blocks (a warm-up call, draining
    a loader); sync() runs before the clock starts and before it stops (CUDA's asynchronous work).
    """
    calls: dict[str, list[Call]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            if before_block is not None:
                before_block(name)
            for _ in range(block):
                if sync is not None:
                    sync()
                start = time.perf_counter()
                value = fn()
                if sync is not None:
                    sync()
                calls[name].append(Call(r, time.perf_counter() - start, value))
    return calls


def seconds(calls: list[Call]) -> list[float]:
    return [c.seconds for c in calls]


def best_round_median(calls: list[Call]) -> float:
    """The lowest per-round median: the round least disturbed by other load."""
    rounds = sorted({c.round for c in calls})
    return min(statistics.median(c.seconds for c in calls if c.round == r) for r in rounds)


def pool_map(fn: Callable, items: Iterable, workers: int) -> list:
    """Map in `workers` processes (or in this one for 1), as the stage under test does."""
    items = list(items)
    if workers <= 1:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def markdown_table(header: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown table; `align` has one letter per column, "r" for right-aligned (default left)."""
    align = align.ljust(len(header), "l")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def save_report(out: Path | None, report: dict, table: str) -> None:
    """Write the report as JSON to `out` and the table beside it (.md), each atomically, then print
    the table (a closed stdout, as in `| head`, then finds the files already written)."""
    from brats_seg.core.atomic import atomic_write_json, atomic_write_text

    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, report)
        atomic_write_text(out.with_suffix(".md"), table + "\n")
    print(table)


def check_report_path(out: Path) -> None:
    """--out of a report: a JSON file name whose .md sibling is another name, and neither an
    existing non-file (folder, FIFO) nor below a file. InputError (exit 2) before anything runs."""
    from brats_seg.errors import InputError

    out = Path(out)
    if out.suffix == ".md":
        raise InputError(out, "--out names the JSON report and the Markdown table goes beside it as .md; "
                              "expected a name such as report.json")
    for target in (out, out.with_suffix(".md")):
        if target.exists() and not target.is_file():
            raise InputError(target, "--out (or its .md sibling) exists and is not a regular file; expected a "
                                     "new file name or a report file to replace")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(out, f"--out lies below {parent}, which is a file, not a folder")
            break
