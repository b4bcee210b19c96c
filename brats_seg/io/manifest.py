"""Manifests link the stages: JSON, schema-checked, written atomically, paths kept inside their root.

Every manifest has schema_version, stage, created_at, brats_seg_version, config, the sha256 of its
input manifest, and `cases` (one entry per case). Paths inside are relative to a root folder and
may not escape it (no absolute paths, no `..`, no symlink out of the root).
"""
from __future__ import annotations

import os
import datetime as _dt
import functools
import json
from pathlib import Path

from brats_seg import __version__
from brats_seg.core.atomic import atomic_write_json
from brats_seg.errors import InputError

SCHEMA_VERSION = 1
STAGES = ("raw", "preprocessed", "predictions")
_SCHEMA_FILE = Path(__file__).parent.parent / "schemas" / "manifest.schema.json"


def new_manifest(stage: str, config: dict, input_sha256: str | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "brats_seg_version": __version__,
        "config": config,
        "input_manifest_sha256": input_sha256,
        "cases": [],
    }


def save_manifest(path: Path, manifest: dict) -> None:
    """Validate against the schema (a bug if it fails) and write atomically."""
    errors = _schema_errors(manifest)
    if errors:
        raise ValueError(f"internal error: manifest does not match its schema: {errors[0]}")
    atomic_write_json(path, manifest)


def load_manifest(path: Path, stage: str | None = None) -> dict:
    """Read and check a manifest; any problem is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); expected a brats-seg manifest")
    except (RecursionError, ValueError, OSError) as exc:
        raise InputError(path, f"cannot be read as a manifest ({type(exc).__name__}); expected a brats-seg manifest")
    if not isinstance(manifest, dict):
        raise InputError(path, "not a JSON object; expected a brats-seg manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(path, f"schema_version {version!r} is not supported; expected {SCHEMA_VERSION}")
    errors = _schema_errors(manifest)
    if errors:
        raise InputError(path, f"does not match the manifest schema: {errors[0]}")
    if stage is not None and manifest["stage"] != stage:
        raise InputError(path, f"is a {manifest['stage']!r} manifest; expected a {stage!r} manifest")
    _check_unique_ids(path, manifest)
    return manifest


def _check_unique_ids(path: Path, manifest: dict) -> None:
    seen: set[str] = set()
    for case in manifest["cases"]:
        if case["id"] in seen:
            raise InputError(path, f"duplicate case id {case['id']!r}; expected each case once")
        seen.add(case["id"])


@functools.lru_cache(maxsize=1)
def _validator():
    """Built once per process: every manifest read and write validates against it."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(_SCHEMA_FILE.read_text()))


@functools.lru_cache(maxsize=1)
def _fast_validator():
    """The schema compiled to Python by fastjsonschema: 1 ms against jsonschema's 83 ms on a 12-case
    raw manifest (it grows with the cases, so a 1000-case job would wait seconds). It answers
    valid / not valid; jsonschema, only for invalid manifests, gives every error with its path."""
    try:
        import fastjsonschema
    except ImportError:
        return None
    return fastjsonschema.compile(json.loads(_SCHEMA_FILE.read_text()))


def _schema_errors(manifest: dict) -> list[str]:
    fast = _fast_validator()
    if fast is not None:
        import fastjsonschema

        try:
            fast(manifest)
            return []
        except fastjsonschema.JsonSchemaException:
            pass  # report with jsonschema's messages below
    found = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return [f"at {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in found]


def resolve_inside(root: Path, rel: str, where: str) -> Path:
    """Turn a manifest path into a real path, refusing anything that leaves `root`."""
    if not isinstance(rel, str) or not rel:
        raise InputError(where, f"path {rel!r} is empty or not a string")
    if os.path.isabs(rel) or Path(rel).is_absolute():
        raise InputError(where, f"path {rel!r} is absolute; expected a path relative to {root}")
    if ".." in Path(rel).parts:
        raise InputError(where, f"path {rel!r} contains '..'; paths may not leave {root}")
    real_root = Path(root).resolve()
    target = (Path(root) / rel).resolve()
    if not target.is_relative_to(real_root):
        raise InputError(where, f"path {rel!r} resolves to {target}, outside {real_root} (symlink out of the root?)")
    return target


def relative_inside(root: Path, path: Path, where: str) -> str:
    """The path of `path` relative to `root` as stored in manifests; refuses paths outside root."""
    real_root, real = Path(root).resolve(), Path(path).resolve()
    if not real.is_relative_to(real_root):
        raise InputError(where, f"{path} resolves to {real}, outside the dataset root {real_root}")
    return Path(os.path.relpath(Path(path).absolute(), Path(root).absolute())).as_posix()


def manifest_root(manifest_path: Path, manifest: dict, index: int = 0) -> Path:
    """Root folder number `index` of a manifest (raw manifests list dataset roots; others use their folder)."""
    folder = Path(manifest_path).resolve().parent
    roots = manifest.get("roots") or ["."]
    return (folder / roots[index]).resolve()
