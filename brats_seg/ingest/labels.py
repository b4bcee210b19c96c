"""Label conventions on disk and the canonical labels inside the pipeline.

Canonical: 0 background, 1 NCR (necrotic / non-enhancing core), 2 ED (edema), 3 ET (enhancing).
On disk: BraTS 2018-2021 {0,1,2,4}; BraTS 2023 {0,1,2,3}; MSD Task01 1 edema, 2 non-enhancing, 3 enhancing.
"""
from __future__ import annotations

import numpy as np

# disk value -> canonical value
TO_CANONICAL: dict[str, dict[int, int]] = {
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},
}
CONVENTIONS = tuple(TO_CANONICAL)
CANONICAL_NAMES = {0: "background", 1: "NCR", 2: "ED", 3: "ET"}


def allowed_values(convention: str) -> set[int]:
    return set(TO_CANONICAL[convention])


def guess_convention(values: set[int], layout_default: str) -> str | None:
    """The convention the present values imply; None when they fit none (the caller reports it)."""
    if 3 in values and 4 in values:
        return None
    if 4 in values:
        return "brats2021"
    if 3 in values and layout_default == "brats2021":
        return "brats2023"
    return layout_default


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    table = np.full(size, 255, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def to_canonical(labels: np.ndarray, convention: str) -> np.ndarray:
    """Disk labels -> canonical uint8 labels (values were validated at ingestion)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"labels outside the {convention} convention")
        labels = labels.astype(np.uint8)
    out = lookup_table(TO_CANONICAL[convention])[labels]
    if (out == 255).any():
        raise ValueError(f"labels outside the {convention} convention")
    return out


def from_canonical(labels: np.ndarray, convention: str) -> np.ndarray:
    """Canonical labels -> the requested on-disk convention (uint8)."""
    inverse = {dst: src for src, dst in TO_CANONICAL[convention].items()}
    return lookup_table(inverse)[np.asarray(labels).astype(np.int64)]
