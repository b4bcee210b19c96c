"""Batch inference over a raw manifest: sharded (--shard I/N), resumable, one predictions manifest.

Output folder:
  masks/<id>.nii.gz           uint8 mask on the input's grid, in the requested label convention
  masks/<id>.json             the case report: volumes (mL) per region and label, uncertainty scores
  probabilities/<id>.nii.gz   optional float32 4D (X, Y, Z, K)
  uncertainty/<id>.nii.gz     optional (--uncertainty, needs --tta) float32 4D TTA std of WT, TC, ET
  qa/<id>.png                 optional QA picture
  (an optional file a case's new prediction was not asked for is removed: it described the old mask)
  superseded/...              a case whose new prediction failed: the outputs an earlier run wrote for
                              it, moved here with their paths, so masks/ holds current masks only
  cases/<id>.json             sidecar written after the mask: the entry and the key it was made for
  predictions.json            stage "predictions" (shards: shards/predictions.shard-I-of-N.json,
                              merged into predictions.json by whichever shard finishes last)
  volumes.csv                 one row per case of predictions.json (written with it: by a single
                              run, or by the shard that merges)

A case is skipped when its sidecar names the same key (checkpoint sha256, inference settings,
input sha256s, convention, outputs asked for) and the files it lists still hash to what it
recorded, so a killed or repeated run redoes only what is missing or stale.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from brats_seg.contracts.stage_files import PredictionSidecar, read_optional
from brats_seg.core.atomic import atomic_write_json
from brats_seg.core.hashing import sha256_file, sha256_json
from brats_seg.core.paths import refuse_overwrite
from brats_seg.core.shards import select_shard
from brats_seg.errors import InputError, with_location
from brats_seg.infer import export
from brats_seg.infer.case_report import REPORT_VERSION, entry_fields, write_case_json
from brats_seg.infer.manifests import PREDICTIONS, manifest_config, write_predictions_manifest
from brats_seg.infer.prepare import entry_convention
from brats_seg.io.content import record_paths
from brats_seg.io.manifest import load_manifest, case_root, resolve_inside

SIDECARS, MASKS, PROBS, QA, UNCERTAINTY = "cases", "masks", "probabilities", "qa", "uncertainty"
SUPERSEDED = "superseded"


@dataclass(frozen=True)
class BatchOptions:
    label_convention: str | None = None  # None: each case's own (its label map's, else its layout's)
    probabilities: bool = False
    qa: bool = False
    force: bool = False
    data_roots: tuple[Path, ...] = ()  # --data-root: folders outside the manifest's own its roots may be in
    uncertainty: bool = False  # also write uncertainty/<id>.nii.gz (the segmenter must mirror: --tta)


def predict_manifest(segmenter, raw_path: Path, out_dir: Path, shard: tuple[int, int] = (0, 1),
                     opts: BatchOptions = BatchOptions(), model_path: Path | None = None) -> dict:
    """Predict this shard's cases of `raw_path` into `out_dir`; returns counts and the manifest path.

    Refused before anything is written: an `out_dir` that is, or directly holds, one of the inputs
    (the raw manifest, a dataset root, a case file, the model at `model_path`)."""
    raw_path, out_dir = Path(raw_path), Path(out_dir)
    raw = load_manifest(raw_path, stage="raw")
    if opts.label_convention:
        export.check_convention(opts.label_convention)
    if not raw["cases"]:
        raise InputError(raw_path, "lists no case; expected a raw manifest written by `brats-seg ingest`")
    cases = select_shard(raw["cases"], shard)
    roots = {c["id"]: case_root(raw_path, raw, c, opts.data_roots) for c in cases}
    inputs = [raw_path, *set(roots.values()), *(p for c in cases for p in record_paths(c, roots[c["id"]]))]
    refuse_overwrite(out_dir, inputs + ([model_path] if model_path else []), "--out", out_is_folder=True)
    config = manifest_config(segmenter, raw_path, opts)
    if opts.uncertainty and not segmenter.window.mirror_axes:
        raise InputError("--uncertainty", "needs --tta: the map is the spread of the mirrored passes")
    with PREDICTIONS.locked(out_dir, shard):
        entries, failed, counts = [], [], {"done": 0, "skipped": 0, "failed": 0}
        for case in cases:
            entry, status = _one_case(segmenter, case, roots[case["id"]], out_dir, opts)
            counts["failed" if isinstance(status, InputError) else status] += 1
            if isinstance(status, InputError):
                failed.append({"id": case["id"], "reason": status.line()})
            else:
                entries.append(entry)
        path = write_predictions_manifest(out_dir, entries, failed, raw_path, config, shard)
    print(f"predict: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed -> {path}",
          file=sys.stderr)
    return {**counts, "manifest": str(path)}


def _one_case(segmenter, case: dict, root: Path, out_dir: Path,
              opts: BatchOptions) -> tuple[dict | None, str | InputError]:
    """(entry, 'done' | 'skipped') or (None, the InputError that stopped this case)."""
    key = case_key(segmenter, case, opts)
    if not opts.force and (entry := stored_entry(out_dir, case["id"], key)) is not None:
        return entry, "skipped"
    try:
        entry = _predict_case(segmenter, case, root, out_dir, opts)
    except InputError as err:  # one bad case does not stop the batch; it is listed as rejected
        print(err.line(), file=sys.stderr)
        if moved := supersede_outputs(out_dir, case["id"]):
            print(f"note: {case['id']}: {len(moved)} file(s) an earlier run wrote for it moved to "
                  f"{Path(out_dir) / SUPERSEDED}/ (they do not describe these inputs and settings)", file=sys.stderr)
        return None, err
    except OSError as exc:  # disk full etc.: stop the batch, naming where it could not write
        raise with_location(exc, out_dir / case["id"]) from exc
    atomic_write_json(out_dir / SIDECARS / f"{case['id']}.json", {"key": key, "entry": entry})
    print(f"predict: {case['id']} {entry['timings']['total_s']:.1f} s", file=sys.stderr)
    return entry, "done"


def case_key(segmenter, case: dict, opts: BatchOptions) -> str:
    """What decides a case's outputs; a sidecar with another key is stale."""
    return sha256_json({
        "model": segmenter.spec.identity.get("sha256"), "settings": segmenter.settings(),
        "inputs": {c: case["images"][c]["sha256"] for c in segmenter.spec.channels if c in case["images"]},
        "convention": opts.label_convention or entry_convention(case),
        "probabilities": opts.probabilities, "qa": opts.qa, "uncertainty": opts.uncertainty,
        "report": REPORT_VERSION,
    })


def stored_entry(out_dir: Path, case_id: str, key: str) -> dict | None:
    """The sidecar's entry if it was made for `key` and every file it lists is intact, else None
    (also when the sidecar is damaged in any way: the case is predicted again)."""
    side = read_optional(Path(out_dir) / SIDECARS / f"{case_id}.json", PredictionSidecar)
    if side is None or side.key != key or side.entry.id != case_id:
        return None
    entry = side.entry.model_dump(mode="python", exclude_unset=True)  # the entry as written, nothing added
    files = [(entry["mask"], entry["sha256"])]
    for kind in ("probabilities", "uncertainty"):
        if entry.get(kind):
            files.append((entry[kind], entry.get(f"{kind}_sha256")))
    try:
        for kind in ("qa", "report"):
            if entry.get(kind) and not resolve_inside(out_dir, entry[kind], case_id).is_file():
                return None
        if all(sha256_file(resolve_inside(out_dir, rel, case_id)) == digest for rel, digest in files):
            return entry
    except (OSError, InputError):
        pass
    return None


def _predict_case(segmenter, case: dict, root: Path, out_dir: Path, opts: BatchOptions) -> dict:
    result = segmenter.predict(case, probabilities=opts.probabilities, root=root, keep_inputs=opts.qa,
                               uncertainty=opts.uncertainty)
    convention = opts.label_convention or result.label_convention
    cid = case["id"]
    rel = f"{MASKS}/{cid}.nii.gz"
    mask = export.write_mask(result.labels, result.geometry, out_dir / rel, convention)
    entry = {"id": cid, "mask": rel, "sha256": sha256_file(mask), "label_convention": convention,
             "shape": list(result.geometry.shape),
             "voxels": {name: int((result.labels == v).sum()) for v, name in ((1, "NCR"), (2, "ED"), (3, "ET"))},
             "inputs_sha256": result.inputs.inputs_sha256 if result.inputs else
             {c: case["images"][c]["sha256"] for c in segmenter.spec.channels if c not in result.missing}}
    if opts.probabilities:
        prel = f"{PROBS}/{cid}.nii.gz"
        path = export.write_probabilities(result.probabilities, result.geometry, out_dir / prel)
        entry.update(probabilities=prel, probabilities_sha256=sha256_file(path))
    if opts.uncertainty:
        urel = f"{UNCERTAINTY}/{cid}.nii.gz"
        path = export.write_uncertainty(result.uncertainty, result.geometry, out_dir / urel)
        entry.update(uncertainty=urel, uncertainty_sha256=sha256_file(path))
    report = result.report(f"{cid}.nii.gz", convention, f"../{UNCERTAINTY}/{cid}.nii.gz" if opts.uncertainty else None,
                           segmenter.spec.identity)
    write_case_json(out_dir / MASKS / f"{cid}.json", report, result.sections)
    entry.update(report=f"{MASKS}/{cid}.json", **entry_fields(report))
    if opts.qa:
        from brats_seg.infer.qa import qa_images, write_qa_png

        qrel = f"{QA}/{cid}.png"
        write_qa_png(result.labels, qa_images(result.inputs), result.geometry, out_dir / qrel, cid,
                     uncertainty=result.uncertainty)
        entry["qa"] = qrel
    drop_unrequested(out_dir, cid, opts)
    entry["timings"] = result.timings
    return entry


def supersede_outputs(out_dir: Path, cid: str) -> list[str]:
    """Move what an earlier run wrote for case `cid` to superseded/ (same relative paths; a newer move
    replaces an older one there), so that no mask is left in masks/ beside a failed prediction of it.
    Returns the paths moved, relative to out_dir."""
    moved = []
    for rel in (f"{MASKS}/{cid}.nii.gz", f"{MASKS}/{cid}.json", f"{PROBS}/{cid}.nii.gz",
                f"{UNCERTAINTY}/{cid}.nii.gz", f"{QA}/{cid}.png", f"{SIDECARS}/{cid}.json"):
        source = Path(out_dir) / rel
        if source.is_file():
            target = Path(out_dir) / SUPERSEDED / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            moved.append(rel)
    return moved


def drop_unrequested(out_dir: Path, cid: str, opts: BatchOptions) -> None:
    """Remove optional outputs an earlier run wrote for this case and this run did not ask for: a
    probability or uncertainty map left beside a new mask would pass for that mask's."""
    for wanted, rel in ((opts.probabilities, f"{PROBS}/{cid}.nii.gz"), (opts.uncertainty, f"{UNCERTAINTY}/{cid}.nii.gz"),
                        (opts.qa, f"{QA}/{cid}.png")):
        if not wanted:
            (Path(out_dir) / rel).unlink(missing_ok=True)
