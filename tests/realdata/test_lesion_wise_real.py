"""Lesion-wise scores on real BraTS 2018 label maps: the vectorised matching agrees with the challenge's
lesion-by-lesion loop (tests/unit/test_lesion_wise.py reference_loop) on real tumour shapes, with ET
split into its real components and false positives added. Reads ../shared/datasets in place."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_seg.evaluate.lesions import LesionWiseConfig, lesion_wise
from brats_seg.evaluate.metrics import union_box
from brats_seg.io.labels import region_masks, to_canonical
from tests.unit.test_lesion_wise import reference_loop

pytestmark = pytest.mark.realdata

BRATS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "brats2018_deepbrainseg"
CASES = ("Brats18_2013_20_1", "Brats18_CBICA_ALU_1")


@pytest.mark.parametrize("case", CASES)
def test_real_case_matches_the_reference_loop(case):
    path = BRATS / case / f"{case}_seg.nii.gz"
    if not path.is_file():
        pytest.skip(f"real BraTS case not available: {path} absent")
    img = nib.load(str(path))
    ref = to_canonical(np.asarray(img.dataobj), "brats2021")
    box = union_box(ref > 0, margin=12)  # the reference loop dilates whole volumes: keep them small
    ref = ref[box]
    rng = np.random.default_rng(0)
    pred = np.where(ndimage.binary_erosion(ref > 0, iterations=2), ref, 0)  # loses thin parts and small lesions
    for _ in range(4):
        c = [int(rng.integers(0, s - 3)) for s in pred.shape]
        pred[c[0]:c[0] + 3, c[1]:c[1] + 3, c[2]:c[2] + 3] = 3
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    p, r = region_masks(pred), region_masks(ref)
    for region in ("WT", "TC", "ET"):
        ours = lesion_wise(p[region], r[region], spacing, LesionWiseConfig())
        dice, hd = reference_loop(p[region], r[region], spacing)
        assert ours["lesion_dice"] == pytest.approx(dice, abs=1e-9), region
        assert ours["lesion_hd95_mm"] == pytest.approx(hd, abs=1e-6), region
        assert 0 < ours["lesion_dice"] < 1
