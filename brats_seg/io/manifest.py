"""Manifests link the stages: JSON, schema-checked, written atomically, paths kept inside their root.

Every manifest has schema_version, stage, created_at, brats_seg_version, config, the sha256 of its
input manifest, and `cases` (one entry per case). Paths inside are relative to a root folder and
may not escape it (no absolute paths, no `..`, no symlink out of the root but those ingest recorded
in the case's `links`; see resolve_inside).
"""
from __future__ import annotations

import os
import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

from brats_seg import __version__
from brats_seg.core.atomic import atomic_write_json
from brats_seg.errors import InputError

SCHEMA_VERSION = 1
STAGES = ("raw", "preprocessed", "predictions")
SCHEMA_FILE = Path(__file__).parent.parent / "schemas" / "manifest.schema.json"  # data_manifests/ holds the same bytes


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
    """Validate against the manifest models (a bug if it fails) and write atomically."""
    errors = _schema_errors(manifest)
    if errors:
        raise ValueError(f"internal error: manifest does not match its schema: {errors[0]}")
    atomic_write_json(path, manifest)


def load_manifest(path: Path, stage: str | None = None) -> dict:
    """Read and check a manifest (type, range and meaning of every field); any problem is an
    InputError naming the file, the case and the field."""
    from brats_seg.contracts.jsonfile import read_json

    path = Path(path)
    if not path.exists():  # a folder or a device gets read_json's own line
        raise InputError(path, "manifest not found")
    manifest = read_json(path, "a brats-seg manifest")
    if not isinstance(manifest, dict):
        raise InputError(path, "not a JSON object; expected a brats-seg manifest")
    version = manifest.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 in Python; not in a manifest
        raise InputError(path, f"schema_version {version!r} is not supported; expected {SCHEMA_VERSION}")
    _check_unique_ids(path, manifest)
    errors = _schema_errors(manifest)
    if errors:
        raise InputError(path, f"does not match the manifest schema: {errors[0]}")
    if stage is not None and manifest["stage"] != stage:
        raise InputError(path, f"is a {manifest['stage']!r} manifest; expected a {stage!r} manifest")
    return manifest


def _check_unique_ids(path: Path, manifest: dict) -> None:
    seen: set[str] = set()
    cases = manifest.get("cases")
    for case in cases if isinstance(cases, list) else []:
        case_id = case.get("id") if isinstance(case, dict) else None
        if isinstance(case_id, str) and case_id in seen:
            raise InputError(path, f"duplicate case id {case_id!r}; expected each case once")
        seen.add(case_id)


def _schema_errors(manifest: dict) -> list[str]:
    """[] when the manifest satisfies its stage's model (brats_seg.contracts.manifests), else the
    first problem as one line."""
    from pydantic import ValidationError

    from brats_seg.contracts.manifests import MODELS, first_error

    model = MODELS.get(manifest.get("stage")) if isinstance(manifest.get("stage"), str) else None
    if model is None:
        return [f"stage: {manifest.get('stage')!r} is not one of {', '.join(MODELS)}"]
    try:
        model.model_validate(manifest)
    except ValidationError as exc:
        return [first_error(exc, manifest)]
    return []


def resolve_inside(root: Path, rel: str, where: str, links: Mapping[str, str] | None = None) -> Path:
    """Turn a manifest path into a real path, refusing anything that leaves `root`.

    A path may lead out of the root only through symlinks that lie inside it and that ingest
    recorded in the case's `links` (link path -> target, relative to the real root), each still
    pointing where it did at ingest: editing a manifest cannot reach a file no such link leads to.
    """
    if not isinstance(rel, str) or not rel:
        raise InputError(where, f"path {rel!r} is empty or not a string")
    if os.path.isabs(rel) or Path(rel).is_absolute():
        raise InputError(where, f"path {rel!r} is absolute; expected a path relative to {root}")
    if ".." in Path(rel).parts:
        raise InputError(where, f"path {rel!r} contains '..'; paths may not leave {root}")
    real_root = Path(root).resolve()
    target = (Path(root) / rel).resolve()
    if target.is_relative_to(real_root):
        return target
    recorded = _checked_links(links, where)
    for link, real in _links_out(real_root, rel):
        expected = recorded.get(link)
        if expected is None:
            raise InputError(where, f"path {rel!r} resolves to {target}, outside {real_root}, through symlink "
                                    f"{link!r} that ingest did not record; expected files inside the root (rerun ingest)")
        if os.path.normpath(real_root / expected) != str(real):
            raise InputError(where, f"symlink {link!r} now points to {real}, outside {real_root}; ingest recorded "
                                    f"{expected!r}: rerun ingest")
    return target


def _checked_links(links: object, where: str) -> dict[str, str]:
    """A case's `links` as read from a manifest (untrusted): a mapping of strings, or absent."""
    if links is None:
        return {}
    if not isinstance(links, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in links.items()):
        raise InputError(where, f"links {links!r:.80} is not a mapping of link path to target; expected "
                                "{\"case/file.nii.gz\": \"../elsewhere/file.nii.gz\"}")
    return dict(links)


def _links_out(real_root: Path, rel: str) -> list[tuple[str, Path]]:
    """(link path, real target) of each symlink on `rel` whose target lies outside `real_root`."""
    out, parent, parts = [], real_root, Path(rel).parts
    for depth, part in enumerate(parts, 1):
        real = (parent / part).resolve()
        if real != parent / part and not real.is_relative_to(real_root):
            out.append(("/".join(parts[:depth]), real))
        parent = real
    return out


def relative_inside(root: Path, path: Path, where: str, links: dict[str, str] | None = None) -> str:
    """The path of `path` relative to `root` as stored in manifests (the link's own path when it is
    reached through symlinks); refuses paths outside root. Symlinks on the way that lead out of the
    root are refused, or, given `links`, followed and recorded there (link path -> target relative
    to the real root) for resolve_inside."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        raise InputError(where, f"{path} is outside the dataset root {root}")
    real_root = Path(root).resolve()
    escapes = _links_out(real_root, rel)
    if escapes and links is None:
        raise InputError(where, f"{path} resolves to {Path(path).resolve()}, outside the dataset root {real_root}")
    for link, real in escapes:
        links[link] = Path(os.path.relpath(real, real_root)).as_posix()
    return Path(rel).as_posix()


def manifest_root(manifest_path: Path, manifest: dict, index: int = 0, data_roots: Sequence[Path] = ()) -> Path:
    """Root folder number `index` of a manifest (raw manifests list dataset roots; others use their folder).

    The allowed roots never come from the manifest alone (an edited `roots: ["/"]` would open every
    file): a root must lie inside the manifest's own folder, or inside a folder the reading command
    was given with --data-root (`data_roots`)."""
    folder = Path(manifest_path).resolve().parent
    roots = manifest.get("roots") or ["."]
    named = Path(os.path.normpath(folder / roots[index]))  # as written (a link the user placed stays theirs)
    root = named.resolve()
    allowed = [folder, *(Path(os.path.abspath(d)) for d in data_roots), *(Path(d).resolve() for d in data_roots)]
    if not any(p.is_relative_to(a) for p in (named, root) for a in allowed):
        raise InputError(manifest_path, f"roots[{index}] {roots[index]!r} is {root}, outside the manifest's folder "
                                        f"{folder}; expected a root inside it, or pass --data-root {root} (or a folder "
                                        "above it) to allow it (ingest writes such a root when DATA lies outside the "
                                        "folder of --out)")
    return root


def case_root(manifest_path: Path, manifest: dict, case: dict, data_roots: Sequence[Path] = ()) -> Path:
    """The dataset root of one raw-manifest case, with its recorded symlinks held to the same rule
    as roots: `links` come from the manifest, so each target must also lie inside the manifest's
    folder or a --data-root (an edited `links` entry cannot open a file elsewhere)."""
    root = manifest_root(manifest_path, manifest, case["root"], data_roots)
    folder = Path(manifest_path).resolve().parent
    allowed = [folder, root, *(Path(d).resolve() for d in data_roots)]
    for link, target in _checked_links(case.get("links"), case["id"]).items():
        real = Path(os.path.normpath(root / target))
        if not any(real.is_relative_to(a) for a in allowed):
            raise InputError(manifest_path, f"case {case['id']!r}: link {link!r} records target {real}, outside the "
                                            f"manifest's folder and every --data-root; pass --data-root {real.parent} "
                                            "(or a folder above it) to allow it")
    return root
