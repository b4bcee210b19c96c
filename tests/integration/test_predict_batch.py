"""Batch prediction from a raw manifest: shards equal one run, reruns skip, the CLI's single-case paths."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.infer.segmenter import Segmenter
from brats_seg.ingest.stage import ingest
from brats_seg.io.manifest import load_manifest
from brats_seg.core.hashing import sha256_file
from tests.run_fixtures import make_tiny_run as make_run

torch.set_num_threads(1)
CHANNELS = ["t1", "t1ce", "t2", "flair"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tests.conftest import make_case

    root = tmp_path_factory.mktemp("data")
    for i in range(5):
        make_case(root / "src", f"case{i}", shape=(24, 20, 18), seed=i, seg=i != 3)
    ingest([root / "src"], root / "raw.json")
    return root / "raw.json"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def _masks(folder: Path) -> dict[str, tuple[np.ndarray, bytes]]:
    out = {}
    for path in sorted((folder / "masks").glob("*.nii.gz")):
        img = nib.load(str(path))
        out[path.name] = (np.asarray(img.dataobj), img.header.binaryblock)
    return out


def test_from_run_loads_model_and_spec(run_dir):
    seg = Segmenter.from_run(run_dir, threads=1)
    assert isinstance(seg.model, torch.nn.Module) and not seg.model.training
    assert seg.spec.mode == "regions" and seg.spec.channels == tuple(CHANNELS)
    assert seg.spec.patch_size == (16, 16, 16) and seg.spec.spacing == "native"
    assert seg.spec.identity["sha256"] == sha256_file(run_dir / "checkpoints" / "best.pt")
    same = Segmenter.from_run(run_dir / "checkpoints" / "best.pt")
    assert same.spec == seg.spec


def test_shards_write_the_same_masks_as_one_run(tmp_path, dataset, run_dir, run_cli):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    code, _, err = run_cli("predict", "--model", run_dir, "--manifest", dataset, "--out", whole, "--threads", "1")
    assert code == 0, err
    for shard in ("1/2", "0/2"):
        code, _, err = run_cli("predict", "--model", run_dir, "--manifest", dataset, "--out", sharded,
                               "--shard", shard)
        assert code == 0, err
    a, b = _masks(whole), _masks(sharded)
    assert sorted(a) == [f"case{i}.nii.gz" for i in range(5)] and sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        assert a[name][1] == b[name][1]
    assert any(arr.any() for arr, _ in a.values())  # not trivially empty
    one = load_manifest(whole / "predictions.json", stage="predictions")
    merged = load_manifest(sharded / "predictions.json", stage="predictions")
    strip = [{k: v for k, v in e.items() if k != "timings"} for e in one["cases"]]
    assert strip == [{k: v for k, v in e.items() if k != "timings"} for e in merged["cases"]]
    assert one["config"] == merged["config"] and one["model"]["sha256"] == sha256_file(run_dir / "checkpoints" / "best.pt")
    for entry in one["cases"]:
        assert entry["sha256"] == sha256_file(whole / entry["mask"])
        assert set(entry["timings"]) >= {"read_s", "preprocess_s", "network_s", "restore_s", "total_s"}


def test_rerun_skips_verified_cases_and_redoes_damaged_ones(tmp_path, dataset, run_dir, capsys):
    from brats_seg.infer.batch import BatchOptions, predict_manifest

    seg = Segmenter.from_run(run_dir)
    out = tmp_path / "pred"
    first = predict_manifest(seg, dataset, out, opts=BatchOptions(label_convention="brats2023"))
    assert first["done"] == 5 and first["skipped"] == 0
    again = predict_manifest(seg, dataset, out, opts=BatchOptions(label_convention="brats2023"))
    assert again["done"] == 0 and again["skipped"] == 5
    (out / "masks" / "case2.nii.gz").write_bytes(b"garbage")  # damaged output
    (out / "cases" / "case4.json").unlink()  # killed before its sidecar
    third = predict_manifest(seg, dataset, out, opts=BatchOptions(label_convention="brats2023"))
    assert third["done"] == 2 and third["skipped"] == 3
    other = predict_manifest(seg, dataset, out, opts=BatchOptions(label_convention="brats2021"))
    assert other["done"] == 5  # another convention is another output
    manifest = json.loads((out / "predictions.json").read_text())
    assert all(e["label_convention"] == "brats2021" for e in manifest["cases"])


def test_probabilities_and_qa_outputs(tmp_path, dataset, run_dir):
    from brats_seg.infer.batch import BatchOptions, predict_manifest

    seg = Segmenter.from_run(run_dir)
    out = tmp_path / "pred"
    predict_manifest(seg, dataset, out, shard=(0, 5), opts=BatchOptions(probabilities=True, qa=True))
    entry = json.loads((out / "shards" / "predictions.shard-0-of-5.json").read_text())["cases"][0]
    probs = nib.load(str(out / entry["probabilities"]))
    assert probs.shape == (24, 20, 18, 3) and probs.get_data_dtype() == np.float32
    png = (out / entry["qa"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (out / "predictions.json").exists()  # 4 shards still missing


def test_cli_single_case_paths(tmp_path, dataset, run_dir, run_cli):
    case = dataset.parent / "src" / "case1"
    code, _, err = run_cli("predict", "--model", run_dir, "--case", case, "--out", tmp_path / "a.nii.gz",
                           "--label-convention", "brats2023", "--probabilities", "--qa", "--tta", "--tta-axes", "0")
    assert code == 0, err
    files = {c: case / f"case1_{c}.nii.gz" for c in CHANNELS}
    args = [x for c in CHANNELS for x in (f"--{c}", files[c])]
    code, _, err = run_cli("predict", "--model", run_dir, *args, "--out", tmp_path / "b", "--tta", "--tta-axes", "0",
                           "--label-convention", "brats2023")
    assert code == 0, err
    a, b = nib.load(str(tmp_path / "a.nii.gz")), nib.load(str(tmp_path / "b" / "case1.nii.gz"))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert (tmp_path / "a_probabilities.nii.gz").is_file() and (tmp_path / "a_qa.png").is_file()
    ref = nib.load(str(files["flair"]))
    assert a.shape == ref.shape and np.array_equal(a.affine, ref.affine)


@pytest.mark.parametrize("argv,needle", [
    (["--case", "NOPE"], "not a folder"),
    (["--t1", "x.nii.gz"], "missing --t1ce --t2 --flair"),
    (["--manifest", "raw.json", "--overlap", "1.5"], "--overlap"),
    ([], "give exactly one input"),
])
def test_cli_input_errors_are_one_line(tmp_path, run_dir, run_cli, argv, needle):
    code, _, err = run_cli("predict", "--model", run_dir, *argv, "--out", tmp_path / "o")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_cli_missing_checkpoint(tmp_path, run_cli):
    code, _, err = run_cli("predict", "--model", tmp_path, "--case", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "checkpoint not found" in err


def test_run_spacing_sources(tmp_path, capsys):
    """The run's preprocessing spacing: checkpoint meta, else run.json's manifest, else the data's voxel size."""
    from brats_seg.infer.runs import run_spacing

    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    assert run_spacing(ckpt, {"preprocess": {"spacing": [2.0, 2.0, 2.0]}}) == [2.0, 2.0, 2.0]
    manifest = tmp_path / "preprocessed.json"
    manifest.write_text(json.dumps({"config": {"preprocess": {"spacing": "native"}}}))
    (tmp_path / "run" / "run.json").write_text(json.dumps({"data": {"manifest": str(manifest)}}))
    assert run_spacing(ckpt, {"spacing": [1.0, 1.0, 1.0]}) == "native"
    manifest.unlink()
    assert run_spacing(ckpt, {"spacing": [1.5, 1.5, 1.5]}) == [1.5, 1.5, 1.5]
    assert "resampling inputs to the training data's voxel size" in capsys.readouterr().err


def test_a_case_that_fails_on_a_rerun_leaves_no_stale_mask_in_masks(tmp_path, run_dir, capsys):
    """Its earlier outputs (mask, report, probabilities, QA, sidecar) move to superseded/: masks/ holds
    current masks only, and nothing written before is lost."""
    from brats_seg.infer.batch import BatchOptions, predict_manifest
    from tests.conftest import make_case

    for i in range(2):
        make_case(tmp_path / "src", f"case{i}", shape=(24, 20, 18), seed=i)
    ingest([tmp_path / "src"], tmp_path / "raw.json")
    seg, out, opts = Segmenter.from_run(run_dir), tmp_path / "pred", BatchOptions(probabilities=True, qa=True)
    assert predict_manifest(seg, tmp_path / "raw.json", out, opts=opts)["done"] == 2
    old_mask = (out / "masks" / "case1.nii.gz").read_bytes()
    t1 = next((tmp_path / "src" / "case1").glob("*t1.nii.gz"))
    t1.write_bytes(t1.read_bytes() + b"\0")  # the input changed after ingest
    capsys.readouterr()
    again = predict_manifest(seg, tmp_path / "raw.json", out,
                             opts=BatchOptions(probabilities=True, qa=True, force=True))
    err = capsys.readouterr().err
    assert again["done"] == 1 and again["failed"] == 1
    assert "sha256 differs" in err and "note: case1: 5 file(s)" in err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["case0.json", "case0.nii.gz"]
    assert not (out / "cases" / "case1.json").exists() and not (out / "qa" / "case1.png").exists()
    assert (out / "superseded" / "masks" / "case1.nii.gz").read_bytes() == old_mask
    for rel in ("masks/case1.json", "probabilities/case1.nii.gz", "qa/case1.png", "cases/case1.json"):
        assert (out / "superseded" / rel).is_file()
    manifest = json.loads((out / "predictions.json").read_text())
    assert [c["id"] for c in manifest["cases"]] == ["case0"] and manifest["rejected"][0]["id"] == "case1"
