"""Find the cases in a source folder for each supported layout; no volume is opened here.

Layouts: BraTS 2018-2021 case folders (`<case>_{t1,t1ce,t2,flair}[_seg]`), BraTS 2023
(`<case>-{t1n,t1c,t2w,t2f}[-seg]`), MSD Task01 (4D images + dataset.json) and nnU-Net raw
(`<case>_0000..` + dataset.json). Validation of what was found happens in validate.py.

Naming rule (BraTS layouts): a file name without its extension is split into tokens at `_`, `-`,
`.` and spaces, case-insensitively.
- a label map is a file whose LAST token is `seg`, `label`, `labels` or `gt` (BraTS `<case>_seg`,
  `<case>-seg`);
- a file with a `mask` or `brainmask` token is neither an image nor a label map (brain or ROI masks);
- otherwise the last token that names a channel decides the channel: t1 (t1, t1n, t1w), t1ce (t1ce,
  t1c, t1gd), t2 (t2, t2w), flair (flair, t2f);
- any other volume file, or one of a channel not asked for (--channels), is ignored and listed in
  the case's warnings.
A DICOM series folder counts as a volume file of its case folder, named like one
(`<case>/t1ce/`, `<case>/<case>_flair/`, each holding one series' slices); see io.dicom.
MSD label maps are the `label` of each dataset.json entry; nnU-Net's are `labelsTr/<case><ending>`.
Symlinks inside a source (case folders, files) are followed; a broken or looping one is refused.
Case ids (folder names for BraTS layouts) have at most MAX_CASE_ID characters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from brats_seg.contracts.dataset_json import DatasetJson, read_dataset_json
from brats_seg.errors import InputError
from brats_seg.io.labels import convention_from_dataset_json
from brats_seg.io.dicom import is_dicom_folder
from brats_seg.io.volume import volume_format

BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")
LAYOUTS = ("auto", "brats2021", "brats2023", "msd", "nnunet")
# name token -> channel; BraTS 2023 names are aliases of the same four channels
CHANNEL_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair",
}
LABEL_TOKENS = frozenset({"seg", "label", "labels", "gt"})
MASK_TOKENS = frozenset({"mask", "brainmask"})
MAX_CASE_ID = 128  # the manifest model's bound; longer ids also break file names downstream
DEFAULT_CONVENTION = {"brats2021": "brats2021", "brats2023": "brats2023", "msd": "msd", "nnunet": "brats2023"}
MSD_DEFAULT_MODALITY = {"0": "flair", "1": "t1", "2": "t1ce", "3": "t2"}
VOLUME_SUFFIX = re.compile(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$", re.I)


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
    origin: Path | None = None  # the case folder (BraTS) or first image (MSD, nnU-Net): named in errors
    ignored: list[Path] = field(default_factory=list)  # volume files that are neither a channel nor a label


def channel_of(token: str) -> str | None:
    return CHANNEL_ALIASES.get(token.lower())


def _tokens(path: Path) -> list[str]:
    stem = VOLUME_SUFFIX.sub("", path.name)
    return [t.lower() for t in re.split(r"[_\-.\s]+", stem) if t]


def classify_file(path: Path) -> str | None:
    """'seg', a channel name, or None (not an image of the case), by the naming rule above."""
    tokens = _tokens(path)
    if tokens and tokens[-1] in LABEL_TOKENS:
        return "seg"
    if MASK_TOKENS.intersection(tokens):
        return None
    return next((channel_of(t) for t in reversed(tokens) if channel_of(t)), None)


def detect_layout(src: Path, meta: DatasetJson | None = None) -> str:
    """Guess the layout of `src`, a dataset folder (or a single case folder); `meta`: its dataset.json
    when already read."""
    meta_path = Path(src) / "dataset.json"
    if meta is not None or meta_path.is_file():
        meta = meta or read_dataset_json(meta_path)
        images = Path(src) / "imagesTr"
        numbered = images.is_dir() and any(re.search(r"_\d{4}\.", p.name) for p in _listing(images))
        return "nnunet" if meta.channel_names is not None or numbered else "msd"
    files = _volume_files(src) or [p for folder in _case_folders(src) for p in _volume_files(folder)]
    names = {t for p in files for t in _tokens(p)}
    return "brats2023" if names & {"t1n", "t1c", "t2w", "t2f"} else "brats2021"


def discover(src: Path, layout: str, channels: tuple[str, ...] = BRATS_CHANNELS) -> list[CaseSpec]:
    """Every case of `src` (at least one, else InputError naming `src`)."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "source is not a folder; expected a dataset or case folder")
    meta_path = src / "dataset.json"
    if layout in ("brats2021", "brats2023") or (layout == "auto" and not meta_path.is_file()):
        return _discover_folders(src, detect_layout(src) if layout == "auto" else layout, channels)
    meta = read_dataset_json(meta_path)  # read once: detection and discovery use the typed object
    layout = detect_layout(src, meta) if layout == "auto" else layout
    cases = _discover_msd(src, meta, channels) if layout == "msd" else _discover_nnunet(src, meta, channels)
    declared = convention_from_dataset_json(meta.label_names()) if meta.labels else None
    for case in cases:
        case.label_convention = declared
    return cases


def _listing(folder: Path) -> list[Path]:
    """The visible entries of `folder`; a broken or looping symlink among them is refused."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise InputError(folder, f"cannot be listed ({exc.strerror}); expected a readable folder")
    for path in entries:
        if path.is_symlink() and not path.exists():
            raise InputError(path, "is a broken or looping symlink; expected a link to an existing file or folder")
    return entries


def _volume_files(folder: Path) -> list[Path]:
    """Volume files and DICOM series folders (a case's images may be either)."""
    return [p for p in _listing(folder) if (volume_format(p) and not p.is_dir()) or is_dicom_folder(p)]


def _case_folders(src: Path) -> list[Path]:
    return [p for p in _listing(src) if p.is_dir()]


def _discover_folders(src: Path, layout: str, channels: tuple[str, ...]) -> list[CaseSpec]:
    folders = [src] if _volume_files(src) else _case_folders(src)
    cases = [spec for folder in folders if (spec := _folder_case(src, folder, layout, channels)) is not None]
    if not cases:
        raise InputError(src, "no case folders with NIfTI/NRRD/MHA files or DICOM series folders found; expected "
                              "<case>/<case>_{t1,t1ce,t2,flair}.nii.gz or <case>/{t1,t1ce,t2,flair}/ DICOM folders")
    return cases


def _folder_case(src: Path, folder: Path, layout: str, channels: tuple[str, ...]) -> CaseSpec | None:
    files = _volume_files(folder)
    if not files:
        return None
    spec = CaseSpec(folder.name, src, layout, channels, {c: [] for c in channels}, origin=folder)
    for path in files:
        kind = classify_file(path)
        if kind == "seg":
            spec.segs.append(path)
        elif kind in spec.images:
            spec.images[kind].append((path, None))
        else:
            spec.ignored.append(path)
    return spec


def declared_channels(meta_path: Path, names: dict[str, str]) -> tuple[str, ...]:
    """Channels of dataset.json (index -> name), mapped onto BraTS names when they match."""
    ordered = [names[k] for k in sorted(names, key=int)]
    mapped = [channel_of(n.replace(" ", "")) or n.lower() for n in ordered]
    if len(set(mapped)) != len(mapped):
        raise InputError(meta_path, f"channel names {ordered} are ambiguous; expected distinct channels")
    return tuple(mapped)


def _discover_msd(src: Path, meta: DatasetJson, channels: tuple[str, ...]) -> list[CaseSpec]:
    found = declared_channels(src / "dataset.json", meta.modality or MSD_DEFAULT_MODALITY)
    entries = meta.image_paths()
    if not entries:
        raise InputError(src / "dataset.json", "training and test list no case; expected at least one "
                                               "{\"image\": ..., \"label\": ...} entry")
    cases = []
    for image, label in entries:
        image_path = src / image
        spec = CaseSpec(VOLUME_SUFFIX.sub("", image_path.name), src, "msd", channels, {c: [] for c in channels},
                        origin=image_path)
        for index, name in enumerate(found):
            if name in spec.images:
                spec.images[name].append((image_path, index))
        spec.segs = [src / label] if label else []
        cases.append(spec)
    return cases


def _discover_nnunet(src: Path, meta: DatasetJson, channels: tuple[str, ...]) -> list[CaseSpec]:
    block = meta.channel_block()
    if not block:
        raise InputError(src / "dataset.json", "channel_names: missing; expected {\"0\": \"T1\", \"1\": \"T1ce\", ...}")
    found = declared_channels(src / "dataset.json", block)
    ending = meta.file_ending or ".nii.gz"
    cases = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        folder = src / images_dir
        if folder.is_dir():
            cases += _nnunet_cases(src, folder, src / labels_dir, found, ending, channels)
    if not cases:
        raise InputError(src, f"imagesTr/ and imagesTs/ hold no <case>_0000{ending} file; expected at least one "
                              "nnU-Net case")
    return cases


def _nnunet_cases(src: Path, folder: Path, labels: Path, found: tuple[str, ...], ending: str,
                  channels: tuple[str, ...]) -> list[CaseSpec]:
    pattern = re.compile(rf"(.+)_\d{{4}}{re.escape(ending)}$")
    ids = sorted({m.group(1) for p in _listing(folder) if (m := pattern.match(p.name))})
    cases = []
    for case_id in ids:
        spec = CaseSpec(case_id, src, "nnunet", channels, {c: [] for c in channels},
                        origin=folder / f"{case_id}_0000{ending}")
        for index, name in enumerate(found):
            path = folder / f"{case_id}_{index:04d}{ending}"
            if name in spec.images and path.exists():
                spec.images[name].append((path, None))
        label = labels / f"{case_id}{ending}"
        spec.segs = [label] if label.exists() else []
        cases.append(spec)
    return cases
