"""Tumour volumes: mL per region and label from the output grid's spacing, the case JSON beside the
mask (single case and batch), volumes.csv over a batch (sharded = one run), the QA title, the contract."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_seg.infer.case_report import case_report, volumes, volumes_csv, write_case_json
from brats_seg.io.geometry import Geometry, as_affine_tuple
from brats_seg.io.labels import REGIONS, to_canonical
from tests.conftest import make_case
from tests.run_fixtures import make_tiny_run


def _labels() -> np.ndarray:
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[0, :, :] = 2  # 20 ED
    labels[1, :2, :] = 1  # 8 NCR
    labels[2, :3, :1] = 3  # 3 ET
    return labels


def test_volumes_in_ml_per_region_and_label():
    found = volumes(_labels(), (2.0, 1.0, 1.5))  # 3 mm^3 a voxel
    assert found["voxel_ml"] == pytest.approx(0.003)
    assert found["voxels"] == {"NCR": 8, "ED": 20, "ET": 3}
    assert found["label_volumes_ml"] == pytest.approx({"NCR": 0.024, "ED": 0.06, "ET": 0.009})
    assert found["volumes_ml"] == pytest.approx({"WT": 0.093, "TC": 0.033, "ET": 0.009})
    assert list(found["volumes_ml"]) == list(REGIONS)


def test_case_json_takes_extra_sections_but_not_over_its_own(tmp_path):
    report = case_report("c1", _labels(), (1, 1, 1), "c1.nii.gz", "brats2021", missing=("flair",))
    path = write_case_json(tmp_path / "c1.json", report, {"registration": {"t2": {"metric_after": -0.5}}})
    stored = json.loads(path.read_text())
    assert stored["registration"] == {"t2": {"metric_after": -0.5}} and stored["missing_channels"] == ["flair"]
    assert stored["volumes_ml"]["WT"] == pytest.approx(0.031)
    with pytest.raises(ValueError, match="volumes_ml"):
        write_case_json(tmp_path / "c2.json", report, {"volumes_ml": {}})
    assert not (tmp_path / "c2.json").exists()


def test_csv_columns_and_empty_cells():
    entries = [{"id": "b", "volumes_ml": {"WT": 2.0, "TC": 1.0, "ET": 0.5}, "label_volumes_ml": {"NCR": 0.5, "ED": 1.0},
                "uncertainty_mean": {"WT": 0.1, "TC": None, "ET": None}},
               {"id": "a", "volumes_ml": {"WT": 0.0, "TC": 0.0, "ET": 0.0}, "label_volumes_ml": {"NCR": 0, "ED": 0}}]
    rows = list(csv.reader(volumes_csv(entries).splitlines()))
    assert rows[0] == ["id", "WT_ml", "TC_ml", "ET_ml", "NCR_ml", "ED_ml", "WT_uncertainty", "TC_uncertainty",
                       "ET_uncertainty"]
    assert rows[1][0] == "a" and rows[1][6:] == ["", "", ""]  # sorted by id; no scores: empty cells
    assert rows[2] == ["b", "2.0", "1.0", "0.5", "0.5", "1.0", "0.1", "", ""]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("run") / "run")


def _mask_volumes(mask_path: Path) -> dict[str, float]:
    img = nib.load(str(mask_path))
    labels = to_canonical(np.asarray(img.dataobj), "brats2021")
    unit = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {r: float(np.isin(labels, ids).sum()) * unit for r, ids in REGIONS.items()}


def test_single_case_json_beside_the_mask(tmp_path, run, run_cli):
    affine = np.diag([-1.2, -0.9, 2.0, 1.0])  # anisotropic: the voxel volume is the output grid's
    case = make_case(tmp_path / "src", "c7", shape=(24, 20, 12), affine=affine, seed=3)
    code, _, err = run_cli("predict", "--model", run, "--case", case, "--out", tmp_path / "o" / "c7_mask.nii.gz")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "c7_mask.json").read_text())
    expected = _mask_volumes(tmp_path / "o" / "c7_mask.nii.gz")
    assert expected["WT"] > 0  # not trivially empty
    assert report["volumes_ml"] == pytest.approx(expected, abs=1e-6)
    assert report["voxel_ml"] == pytest.approx(1.2 * 0.9 * 2.0 / 1000)
    assert report["id"] == "c7" and report["mask"] == "c7_mask.nii.gz"
    assert sum(report["label_volumes_ml"].values()) == pytest.approx(report["volumes_ml"]["WT"], abs=1e-5)


def test_batch_csv_sharded_equals_one_run(tmp_path, run, run_cli):
    from brats_seg.ingest.stage import ingest

    for i in range(3):
        make_case(tmp_path / "src", f"case{i}", shape=(20, 18, 16), seed=i)
    ingest([tmp_path / "src"], tmp_path / "raw.json")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli("predict", "--model", run, "--manifest", tmp_path / "raw.json", "--out", whole)[0] == 0
    assert run_cli("predict", "--model", run, "--manifest", tmp_path / "raw.json", "--out", parts,
                   "--shard", "0/2")[0] == 0
    assert not (parts / "volumes.csv").exists()  # written with the merged manifest only
    assert run_cli("predict", "--model", run, "--manifest", tmp_path / "raw.json", "--out", parts,
                   "--shard", "1/2")[0] == 0
    text = (whole / "volumes.csv").read_text()
    assert text == (parts / "volumes.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["id"] for r in rows] == ["case0", "case1", "case2"]
    manifest = json.loads((whole / "predictions.json").read_text())
    for row, entry in zip(rows, manifest["cases"]):
        expected = _mask_volumes(whole / entry["mask"])
        assert float(row["WT_ml"]) == pytest.approx(expected["WT"], abs=1e-6)
        assert entry["volumes_ml"] == pytest.approx(expected, abs=1e-6)
        side = json.loads((whole / entry["report"]).read_text())
        assert entry["report"] == f"masks/{entry['id']}.json" and side["volumes_ml"] == entry["volumes_ml"]
    (whole / manifest["cases"][0]["report"]).unlink()  # a lost case JSON: that case is redone on rerun
    code, _, err = run_cli("predict", "--model", run, "--manifest", tmp_path / "raw.json", "--out", whole)
    assert code == 0 and "1 done, 2 skipped" in err and (whole / manifest["cases"][0]["report"]).is_file()


def test_qa_title_shows_volumes():
    from brats_seg.infer.qa import qa_figure

    labels = _labels()
    image = np.ones(labels.shape, np.float32)
    geometry = Geometry(labels.shape, as_affine_tuple(np.diag([2.0, 1.0, 1.5, 1.0])))
    import matplotlib.pyplot as plt

    fig = qa_figure(labels, {"flair": image}, geometry, "c1")
    try:
        assert "WT 0.093 mL, TC 0.033 mL, ET 0.009 mL" in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_contract_refuses_a_negative_volume(tmp_path):
    from brats_seg.contracts.manifests import PredictionCase
    from pydantic import ValidationError

    base = {"id": "c", "mask": "masks/c.nii.gz", "sha256": "0" * 64}
    assert PredictionCase.model_validate({**base, "volumes_ml": {"WT": 1.5, "TC": 0, "ET": 0}}).volumes_ml["WT"] == 1.5
    for bad in ({"volumes_ml": {"WT": -1.0}}, {"volumes_ml": {"XX": 1.0}}, {"uncertainty": "u/c.nii.gz"}):
        with pytest.raises(ValidationError):
            PredictionCase.model_validate({**base, **bad})
