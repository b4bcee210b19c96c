"""`brats-seg run pipelines/runs/<name>.yaml`: a whole study as one command; current stages are skipped."""
from __future__ import annotations

import argparse
from pathlib import Path

from brats_seg.contracts.pipeline_file import NAME
from brats_seg.errors import InputError


def parse_vars(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not NAME.match(key):
            raise InputError("--set", f"{item!r} is not KEY=VALUE with KEY a variable name (letters, digits, "
                                      "underscores), as in --set train_budget_s=300")
        out[key] = value
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", type=Path, help="pipeline YAML (see pipelines/runs/)")
    p.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: the file's workdir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a ${KEY} variable")
    p.add_argument("--force", action="store_true", help="run every stage even if current")


def run(args: argparse.Namespace) -> int:
    from brats_seg.pipeline.runner import run_pipeline

    records = run_pipeline(args.pipeline, args.workdir, parse_vars(args.set), args.force)
    ran = sum(r["ran"] for r in records)
    print(f"pipeline {args.pipeline.name}: {ran} stage(s) ran, {len(records) - ran} up to date")
    return 0
