"""Find the cases in a source folder for each supported layout; no file is opened here.

Layouts: BraTS 2018-2021 case folders (`<case>_{t1,t1ce,t2,flair}[_seg]`), BraTS 2023
(`<case>-{t1n,t1c,t2w,t2f}[-seg]`), MSD Task01 (4D images + dataset.json) and nnU-Net raw
(`<case>_0000..` + dataset.json). Validation of what was found happens in validate.py.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from brats_seg.errors import InputError
from brats_seg.io.labels import convention_from_dataset_json
from brats_seg.io.volume import volume_format

BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")
LAYOUTS = ("auto", "brats2021", "brats2023", "msd", "nnunet")
# name token -> channel; BraTS 2023 names are aliases of the same four channels
CHANNEL_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair",
}
SEG_TOKENS = {"seg", "label", "labels", "mask"}
DEFAULT_CONVENTION = {"brats2021": "brats2021", "brats2023": "brats2023", "msd": "msd", "nnunet": "brats2023"}


@dataclass
class CaseSpec:
    """What discovery found for one case: candidate files per channel (several = ambiguous)."""

    case_id: str
    root: Path
    layout: str
    channels: tuple[str, ...]
    images: dict[str, list[tuple[Path, int | None]]] = field(default_factory=dict)
    segs: list[Path] = field(default_factory=list)
    label_convention: str | None = None  # declared by dataset.json, when it says


def channel_of(token: str) -> str | None:
    return CHANNEL_ALIASES.get(token.lower())


def _tokens(path: Path) -> list[str]:
    stem = re.sub(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$", "", path.name, flags=re.I)
    return [t.lower() for t in re.split(r"[_\-.\s]+", stem) if t]


def classify_file(path: Path) -> str | None:
    """'seg', a channel name, or None, from the last meaningful token of the file name."""
    for token in reversed(_tokens(path)):
        if token in SEG_TOKENS:
            return "seg"
        if channel_of(token):
            return channel_of(token)
    return None


def detect_layout(src: Path) -> str:
    """Guess the layout of `src`, a dataset folder (or a single case folder)."""
    meta = src / "dataset.json"
    if meta.is_file():
        return "nnunet" if "channel_names" in _read_json(meta) or (src / "imagesTr").is_dir() and _has_numbered(src / "imagesTr") else "msd"
    names = [t for p in _volume_files(src, recursive=True) for t in _tokens(p)]
    return "brats2023" if any(t in ("t1n", "t1c", "t2w", "t2f") for t in names) else "brats2021"


def _has_numbered(folder: Path) -> bool:
    return any(re.search(r"_\d{4}\.", p.name) for p in folder.iterdir())


def discover(src: Path, layout: str, channels: tuple[str, ...] = BRATS_CHANNELS) -> list[CaseSpec]:
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "source is not a folder; expected a dataset or case folder")
    if layout == "auto":
        layout = detect_layout(src)
    if layout in ("brats2021", "brats2023"):
        return _discover_folders(src, layout, channels)
    meta = _read_json(src / "dataset.json")
    cases = _discover_msd(src, meta, channels) if layout == "msd" else _discover_nnunet(src, meta, channels)
    declared = convention_from_dataset_json(meta["labels"]) if isinstance(meta.get("labels"), dict) else None
    for case in cases:
        case.label_convention = declared
    return cases


def _volume_files(folder: Path, recursive: bool = False) -> list[Path]:
    items = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in items if volume_format(p) and not p.name.startswith("."))


def _discover_folders(src: Path, layout: str, channels: tuple[str, ...]) -> list[CaseSpec]:
    folders = [src] if _volume_files(src) else sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    cases = []
    for folder in folders:
        files = _volume_files(folder)
        if not files:
            continue
        spec = CaseSpec(folder.name, src, layout, channels, {c: [] for c in channels})
        for path in files:
            kind = classify_file(path)
            if kind == "seg":
                spec.segs.append(path)
            elif kind in spec.images:
                spec.images[kind].append((path, None))
        cases.append(spec)
    if not cases:
        raise InputError(src, "no case folders with NIfTI/NRRD/MHA files found; expected <case>/<case>_{t1,t1ce,t2,flair}.nii.gz")
    return cases


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "dataset.json not found; expected it for MSD and nnU-Net layouts")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})")
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


def declared_channels(meta_path: Path, names: dict) -> tuple[str, ...]:
    """Channels from dataset.json ('modality' or 'channel_names'), mapped onto BraTS names when they match."""
    try:
        ordered = [names[k] for k in sorted(names, key=int)]
    except (ValueError, TypeError):
        raise InputError(meta_path, "channel keys must be '0', '1', ...")
    mapped = [channel_of(str(n).replace(" ", "")) or str(n).lower() for n in ordered]
    if len(set(mapped)) != len(mapped):
        raise InputError(meta_path, f"channel names {ordered} are ambiguous; expected distinct channels")
    return tuple(mapped)


def _discover_msd(src: Path, meta: dict, channels: tuple[str, ...]) -> list[CaseSpec]:
    found = declared_channels(src / "dataset.json", meta.get("modality", {"0": "flair", "1": "t1", "2": "t1ce", "3": "t2"}))
    entries = [(e["image"], e.get("label")) for e in meta.get("training", [])]
    entries += [(e if isinstance(e, str) else e["image"], None) for e in meta.get("test", [])]
    cases = []
    for image, label in entries:
        image_path = src / image
        case_id = re.sub(r"\.(nii\.gz|nii)$", "", image_path.name)
        spec = CaseSpec(case_id, src, "msd", channels, {c: [] for c in channels})
        for index, name in enumerate(found):
            if name in spec.images:
                spec.images[name].append((image_path, index))
        spec.segs = [src / label] if label else []
        cases.append(spec)
    return cases


def _discover_nnunet(src: Path, meta: dict, channels: tuple[str, ...]) -> list[CaseSpec]:
    found = declared_channels(src / "dataset.json", meta.get("channel_names") or meta.get("modality") or {})
    ending = meta.get("file_ending", ".nii.gz")
    cases = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        folder = src / images_dir
        if not folder.is_dir():
            continue
        ids = sorted({m.group(1) for p in folder.iterdir() if (m := re.match(rf"(.+)_\d{{4}}{re.escape(ending)}$", p.name))})
        for case_id in ids:
            spec = CaseSpec(case_id, src, "nnunet", channels, {c: [] for c in channels})
            for index, name in enumerate(found):
                path = folder / f"{case_id}_{index:04d}{ending}"
                if name in spec.images and path.exists():
                    spec.images[name].append((path, None))
            label = src / labels_dir / f"{case_id}{ending}"
            spec.segs = [label] if label.exists() else []
            cases.append(spec)
    return cases
