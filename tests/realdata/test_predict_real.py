"""Inference on shared real data: a BraTS 2018 case (LPS, 240x240x155) with a tiny random Attention
U-Net, and the anisotropic TCGA NRRD with a thresholding model. Outputs must sit on the input's exact
grid, in the requested label convention. Reads ../shared/datasets in place, copies nothing."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.infer.segmenter import ModelSpec, Segmenter
from brats_seg.io.labels import to_canonical

pytestmark = pytest.mark.realdata
torch.set_num_threads(1)

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
CASE = DATASETS / "brats2018_deepbrainseg" / "Brats18_CBICA_AQN_1"
NRRD = DATASETS / "tcga_gbm_pyradiomics" / "brain1_image.nrrd"
CHANNELS = ("t1", "t1ce", "t2", "flair")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


def tiny_segmenter(spacing="native") -> Segmenter:
    from brats_seg.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("attention_unet3d", in_channels=4, out_channels=3, features=(4, 8, 16))
    with torch.no_grad():  # push the random net towards tumour so that every label appears
        model.head.bias.copy_(torch.tensor([1.0, 0.5, 0.0]))
    return Segmenter(model, ModelSpec("regions", CHANNELS, (64, 64, 64), spacing), overlap=0.25, batch_size=2)


def test_real_brats_case_geometry_and_conventions(tmp_path):
    from brats_seg.evaluate.stage import evaluate
    from brats_seg.infer.batch import BatchOptions, predict_manifest
    from brats_seg.ingest.stage import ingest

    need(CASE)
    ingest([CASE], tmp_path / "raw.json")  # the case folder is its own root: only this case is read
    # a run preprocessed at 2 mm: the real case goes through resampling and back
    summary = predict_manifest(tiny_segmenter((2.0, 2.0, 2.0)), tmp_path / "raw.json", tmp_path / "pred",
                               opts=BatchOptions(label_convention="brats2023", data_roots=(CASE,)))
    assert summary["done"] == 1
    mask = nib.load(str(tmp_path / "pred" / "masks" / f"{CASE.name}.nii.gz"))
    ref = nib.load(str(CASE / f"{CASE.name}_flair.nii.gz"))
    assert mask.shape == ref.shape == (240, 240, 155) and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask.affine, ref.affine)
    for getter in ("get_sform", "get_qform"):
        (m_out, c_out), (m_ref, c_ref) = getattr(mask.header, getter)(coded=True), getattr(ref.header, getter)(coded=True)
        assert int(c_out) == int(c_ref) and np.array_equal(m_out, m_ref)
    values = set(np.unique(np.asarray(mask.dataobj)).tolist())
    assert values <= {0, 1, 2, 3} and {2, 3} <= values  # BraTS 2023 labels: ET written as 3
    result = evaluate(tmp_path / "pred", tmp_path / "raw.json", tmp_path / "eval", data_roots=(CASE,))
    assert result["cases"] == [CASE.name]
    assert all(0.0 <= result["regions"][r]["dice"]["mean"] <= 1.0 for r in ("WT", "TC", "ET"))


def test_real_brats_case_default_convention_is_the_datasets(tmp_path):
    need(CASE)
    seg = tiny_segmenter()
    result = seg.predict(CASE)
    assert result.label_convention == "brats2021"
    disk = np.asarray(result.mask_image().dataobj)
    assert 4 in disk and 3 not in disk
    np.testing.assert_array_equal(to_canonical(disk, "brats2021"), result.labels)
    from brats_seg.preprocess.spatial import union_nonzero_box

    box = union_nonzero_box([np.asarray(nib.load(str(CASE / f"{CASE.name}_{c}.nii.gz")).dataobj) for c in CHANNELS])
    inside = np.zeros(disk.shape, bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    assert not result.labels[~inside].any() and result.labels[inside].any()  # only the brain's box is predicted


class ThresholdModel(torch.nn.Module):
    """logits = 20 * (z - 2) on every output: all labels ET where the (single) image is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, :3] - 2.0)


def test_shared_nrrd_comes_back_on_its_grid():
    from brats_seg.io.volume import read_volume

    need(NRRD)
    data, geom = read_volume(NRRD)
    seg = Segmenter(ThresholdModel(), ModelSpec("regions", CHANNELS, (64, 64, 16)))
    result = seg.predict({c: NRRD for c in CHANNELS})
    out = result.mask_image("brats2021")
    assert out.shape == data.shape == (256, 256, 25)
    np.testing.assert_allclose(out.affine, geom.affine_array, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == tuple(geom.orientation)
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
    brain = data[data != 0].astype(np.float64)
    z = (data.astype(np.float64) - brain.mean()) / brain.std()
    expected = (z > 2.0) & (data != 0)
    got = np.asarray(out.dataobj) == 4
    assert expected.sum() > 1000
    assert np.count_nonzero(got != expected) <= 0.0001 * data.size  # float32 vs float64 at the threshold
