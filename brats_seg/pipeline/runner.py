"""`brats-seg run pipeline.yaml`: the stages a pipeline file declares, in order.

A stage is skipped when its stamp (workdir/.pipeline/<n>-<stage>.json) records the same stage
parameters and input content stamps, and its outputs still have the stamps recorded. So a rerun
after a change redoes the changed stage and everything downstream of it, and nothing else.
Relative paths in a pipeline are relative to its workdir; `config:` files to the pipeline file.

The whole file is checked before the first stage runs: its shape and value types
(contracts/pipeline_file.py), every stage's options against its command (stages.py), and that no
output replaces an input: no stage writes the pipeline file or an input no stage of the file
produces, and the workdir is none of those inputs' folders. The folders the file ingests are
passed on as --data-root to the stages that read raw manifests (split writes manifests whose
roots lie outside their own folder).
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from brats_seg.contracts.pipeline_file import parse_pipeline
from brats_seg.core.atomic import atomic_write_json
from brats_seg.core.hashing import sha256_json
from brats_seg.core.paths import refuse_overwrite
from brats_seg.core.yamlio import read_yaml
from brats_seg.errors import InputError
from brats_seg.pipeline.freshness import content_stamps
from brats_seg.pipeline.stages import STAGES, StageContext

_VAR = re.compile(r"\$\{(\w+)\}")


def load_pipeline(path: Path, variables: dict[str, str]) -> dict:
    """The pipeline file checked (pipeline_file.PipelineFile) with ${NAME} replaced: a plain dict."""
    spec = parse_pipeline(path, read_yaml(path, "pipeline file not found", "a pipeline YAML"))
    values = {**spec.variables(), **variables}
    stages = [{"stage": s.stage, **s.options} for s in spec.stages]
    return {"workdir": spec.workdir, "stages": _substitute(path, stages, values)}


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


@dataclass
class PlannedStage:
    index: int
    kind: str
    params: dict
    ctx: StageContext

    @property
    def where(self) -> str:
        return f"stage {self.index} ({self.kind})"


def plan_pipeline(path: Path, stages: list[dict], workdir: Path) -> list[PlannedStage]:
    """Every stage's command line, checked against its command before any stage runs."""
    for index, stage in enumerate(stages):
        if stage["stage"] not in STAGES:
            raise InputError(path, f"stages/{index}/stage: unknown stage {stage['stage']!r}; expected one of "
                                   f"{', '.join(STAGES)}")
    roots = data_roots(stages, workdir)
    plan = []
    for index, stage in enumerate(stages):
        kind, params = stage["stage"], {k: v for k, v in stage.items() if k != "stage"}
        where = f"{path}: stages/{index} ({kind})"
        plan.append(PlannedStage(index, kind, params, STAGES[kind].context(params, path.parent, workdir, where, roots)))
    return plan


def data_roots(stages: list[dict], workdir: Path) -> list[Path]:
    """The dataset folders the file itself names (ingest sources): later stages may read cases there
    through raw manifests whose roots lie outside the manifest's folder (split writes such ones)."""
    found = [(workdir / str(src)).resolve() for s in stages if s["stage"] == "ingest"
             for src in (s.get("sources") if isinstance(s.get("sources"), list) else [s.get("sources")]) if src]
    return list(dict.fromkeys(found))


def refuse_overwriting_inputs(path: Path, plan: list[PlannedStage], workdir: Path) -> None:
    """No stage output is the pipeline file, a config or a user's input; the workdir is none of the
    user's inputs and holds none of their files (inputs no stage of this file produces)."""
    outs = [p.ctx.out for p in plan]
    external = [i for p in plan for i in p.ctx.inputs if not any(i == o or o in i.parents for o in outs)]
    for stage in plan:
        option = f"stages/{stage.index} ({stage.kind}) out:"
        refuse_overwrite(stage.ctx.out, [path], option, out_is_folder=False)
        refuse_overwrite(stage.ctx.out, external, option)
    refuse_overwrite(workdir, external, "--workdir (or the file's workdir:)", out_is_folder=True)


def run_pipeline(path: Path, workdir: Path | None = None, variables: dict[str, str] | None = None,
                 force: bool = False) -> list[dict]:
    """Run every stage of the pipeline file; returns one record per stage (ran or skipped, seconds).
    The whole file is checked first: a problem in stage 5 stops the run before stage 0 starts."""
    path = Path(path).resolve()
    spec = load_pipeline(path, variables or {})
    workdir = Path(workdir or spec.get("workdir") or "runs/" + path.stem).resolve()
    plan = plan_pipeline(path, spec["stages"], workdir)
    refuse_overwriting_inputs(path, plan, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return [_run_stage(stage, workdir, force) for stage in plan]


def _run_stage(stage: PlannedStage, workdir: Path, force: bool) -> dict:
    impl, ctx, kind, index = STAGES[stage.kind], stage.ctx, stage.kind, stage.index
    stamp_path = workdir / ".pipeline" / f"{index:02d}-{kind}.json"
    want = {"params": sha256_json(stage.params), "inputs": content_stamps(ctx.inputs)}
    if not force and _current(stamp_path, want, ctx.outputs):
        print(f"[{index}] {kind}: up to date, skipped", file=sys.stderr)
        return {"stage": kind, "ran": False, "seconds": 0.0}
    _prepare_output(impl, ctx, stamp_path, want)
    print(f"[{index}] {kind}: running", file=sys.stderr, flush=True)
    start = time.perf_counter()
    impl.run(ctx, stage.where)
    seconds = time.perf_counter() - start
    atomic_write_json(stamp_path, {**want, "outputs": content_stamps(ctx.outputs), "seconds": seconds})
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
    if not isinstance(stamp, dict):  # a damaged stamp means "not done": the stage reruns
        return False
    if stamp.get("params") != want["params"] or stamp.get("inputs") != want["inputs"]:
        return False
    now = content_stamps(outputs)
    return all(v is not None for v in now.values()) and stamp.get("outputs") == now
