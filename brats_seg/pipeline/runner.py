"""`brats-seg run pipeline.yaml`: the stages a pipeline file declares, in order.

A stage is skipped when its stamp (workdir/.pipeline/<n>-<stage>.json) records the same stage
parameters and input fingerprints, and its outputs still have the fingerprints recorded. So a rerun
after a change redoes the changed stage and everything downstream of it, and nothing else.
Relative paths in a pipeline are relative to its workdir; `config:` files to the pipeline file.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path


from brats_seg.errors import InputError
from brats_seg.core.atomic import atomic_write_json
from brats_seg.core.hashing import sha256_json
from brats_seg.pipeline.fingerprints import fingerprints
from brats_seg.pipeline.stages import STAGES
from brats_seg.core.yamlio import read_yaml

_VAR = re.compile(r"\$\{(\w+)\}")


def load_pipeline(path: Path, variables: dict[str, str]) -> dict:
    spec = read_yaml(path, "pipeline file not found", "a pipeline YAML")
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        raise InputError(path, "expected a mapping with a 'stages' list")
    values = {**{k: str(v) for k, v in (spec.get("vars") or {}).items()}, **variables}
    return _substitute(path, spec, values)


def _substitute(path: Path, node, values: dict[str, str]):
    if isinstance(node, dict):
        return {k: _substitute(path, v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(path, v, values) for v in node]
    if isinstance(node, str):
        missing = [m for m in _VAR.findall(node) if m not in values]
        if missing:
            raise InputError(path, f"variable ${{{missing[0]}}} is not set; pass --set {missing[0]}=VALUE")
        return _VAR.sub(lambda m: values[m.group(1)], node)
    return node


def run_pipeline(path: Path, workdir: Path | None = None, variables: dict[str, str] | None = None,
                 force: bool = False) -> list[dict]:
    """Run every stage of the pipeline file; returns one record per stage (ran or skipped, seconds)."""
    path = Path(path).resolve()
    spec = load_pipeline(path, variables or {})
    workdir = Path(workdir or spec.get("workdir") or "runs/" + path.stem).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, stage in enumerate(spec["stages"]):
        records.append(_run_stage(index, stage, path.parent, workdir, force))
    return records


def _run_stage(index: int, stage: dict, spec_dir: Path, workdir: Path, force: bool) -> dict:
    kind = stage.get("stage")
    if kind not in STAGES:
        raise InputError(f"stage {index}", f"unknown stage {kind!r}; expected one of {', '.join(STAGES)}")
    impl = STAGES[kind]
    params = {k: v for k, v in stage.items() if k != "stage"}
    ctx = impl.context(params, spec_dir, workdir)
    stamp_path = workdir / ".pipeline" / f"{index:02d}-{kind}.json"
    want = {"params": sha256_json(params), "inputs": fingerprints(ctx.inputs)}
    if not force and _current(stamp_path, want, ctx.outputs):
        print(f"[{index}] {kind}: up to date, skipped", file=sys.stderr)
        return {"stage": kind, "ran": False, "seconds": 0.0}
    _prepare_output(impl, ctx, stamp_path, want)
    print(f"[{index}] {kind}: running", file=sys.stderr, flush=True)
    start = time.perf_counter()
    impl.run(ctx)
    seconds = time.perf_counter() - start
    atomic_write_json(stamp_path, {**want, "outputs": fingerprints(ctx.outputs), "seconds": seconds})
    print(f"[{index}] {kind}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"stage": kind, "ran": True, "seconds": seconds}


def _prepare_output(impl, ctx, stamp_path: Path, want: dict) -> None:
    """For stages that refuse an existing output (training): resume the same interrupted work,
    or move a stale output aside (never delete it) when the parameters or inputs changed."""
    import json
    import os

    if not impl.resumable:
        return
    started_path = stamp_path.with_suffix(".started.json")
    folder = ctx.outputs[0].parent if impl.output_file else ctx.outputs[0]
    try:
        started = json.loads(started_path.read_text())
    except (OSError, ValueError):
        started = None
    if folder.exists() and any(folder.iterdir()):
        if started == want:
            ctx.argv.append("--resume")
        else:
            aside = folder.with_name(f"{folder.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(folder, aside)
            print(f"moved the outdated {folder.name} aside to {aside.name}", file=sys.stderr)
    atomic_write_json(started_path, want)


def _current(stamp_path: Path, want: dict, outputs: list[Path]) -> bool:
    import json

    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("params") != want["params"] or stamp.get("inputs") != want["inputs"]:
        return False
    now = fingerprints(outputs)
    return all(v is not None for v in now.values()) and stamp.get("outputs") == now
