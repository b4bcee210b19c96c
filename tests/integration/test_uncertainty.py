"""--uncertainty: the TTA standard deviation of each region's probability, checked against the 8
mirrored passes computed by hand; zero for a mirror-symmetric network; the mean prediction is
unchanged; a float32 map on the input grid; per-region scores in the case JSON; refused without --tta."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.infer.model_spec import ModelSpec
from brats_seg.infer.segmenter import Segmenter
from brats_seg.infer.sliding_window import WindowConfig, mirror_sets, sliding_window, sliding_window_spread
from tests.conftest import make_case
from tests.run_fixtures import make_tiny_run

torch.set_num_threads(1)
CHANNELS = ("t1", "t1ce", "t2", "flair")


def _asymmetric() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(2, 3, 3, padding=1)  # random 3x3x3 kernels: flips change the output


def test_spread_equals_the_std_of_the_mirrored_passes():
    net = _asymmetric()
    image = torch.randn(2, 8, 8, 8)
    cfg = WindowConfig((8, 8, 8), mirror_axes=(0, 1, 2), brain_only=False)  # one window: weights cancel
    with torch.no_grad():
        probs, std = sliding_window_spread(image, net, cfg, torch.sigmoid, activation=torch.sigmoid)
        passes = []
        for axes in mirror_sets((0, 1, 2)):
            dims = [2 + a for a in axes]
            y = net(torch.flip(image[None], dims) if dims else image[None])
            passes.append(torch.sigmoid(torch.flip(y, dims) if dims else y)[0])
    expected = torch.stack(passes).std(dim=0, unbiased=False)
    torch.testing.assert_close(std, expected, atol=2e-6, rtol=1e-4)
    assert float(std.max()) > 0.01  # the test can fail: the passes disagree
    torch.testing.assert_close(probs, sliding_window(image, net, cfg, activation=torch.sigmoid))


def test_mirror_symmetric_network_has_no_spread():
    net = torch.nn.Conv3d(2, 3, 1)  # pointwise: every flip gives the same answer
    cfg = WindowConfig((8, 8, 8), overlap=0.5, mirror_axes=(0, 1, 2), brain_only=False)
    with torch.no_grad():
        _, std = sliding_window_spread(torch.randn(2, 13, 9, 8), net, cfg, torch.sigmoid)
    assert std.shape == (3, 13, 9, 8) and float(std.max()) < 1e-6


def test_label_mode_spread_is_over_region_probabilities():
    seg = Segmenter(torch.nn.Conv3d(4, 4, 1), ModelSpec("labels", CHANNELS, (8, 8, 8)), tta=True)
    regions = seg._region_probabilities(torch.randn(2, 4, 3, 3, 3))
    assert regions.shape == (2, 3, 3, 3, 3)
    assert bool((regions[:, 0] >= regions[:, 1] - 1e-6).all() and (regions[:, 1] >= regions[:, 2] - 1e-6).all())


def test_api_refuses_uncertainty_without_mirroring(tmp_path):
    case = make_case(tmp_path, "c0", shape=(16, 16, 16))
    seg = Segmenter(torch.nn.Conv3d(4, 3, 1), ModelSpec("regions", CHANNELS, (16, 16, 16)))
    with pytest.raises(InputError, match="--tta"):
        seg.predict(case, uncertainty=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("run") / "run")


def test_cli_map_on_the_input_grid_and_scores(tmp_path, run, run_cli):
    case = make_case(tmp_path / "src", "c1", shape=(22, 20, 14), seed=2)
    out = tmp_path / "o" / "c1.nii.gz"
    code, _, err = run_cli("predict", "--model", run, "--case", case, "--out", out, "--tta", "--tta-axes", "0,1",
                           "--uncertainty", tmp_path / "u.nii.gz", "--qa")
    assert code == 0, err
    umap, mask = nib.load(str(tmp_path / "u.nii.gz")), nib.load(str(out))
    assert umap.get_data_dtype() == np.float32 and umap.shape == mask.shape + (3,)
    assert np.allclose(umap.affine, mask.affine)
    values = np.asarray(umap.dataobj)
    assert values.min() >= 0 and values.max() <= 0.5 and values.max() > 0
    report = json.loads((tmp_path / "o" / "c1.json").read_text())
    assert report["uncertainty"]["map"] == "../u.nii.gz"
    labels = np.asarray(mask.dataobj) > 0  # WT
    wt = report["uncertainty"]["regions"]["WT"]
    assert wt["mean_in_region"] == pytest.approx(float(values[..., 0][labels].mean()), abs=1e-5)
    unit = float(np.prod(mask.header.get_zooms())) / 1000
    assert wt["uncertain_ml"] == pytest.approx(float((values[..., 0] >= 0.1).sum()) * unit, abs=1e-6)
    assert (tmp_path / "o" / "c1_qa.png").is_file()


@pytest.mark.parametrize("extra, needle", [(["--uncertainty"], "needs --tta"),
                                           (["--tta", "--uncertainty", "u.txt"], "not a .nii")])
def test_cli_refusals(tmp_path, run, run_cli, extra, needle):
    case = make_case(tmp_path / "src", "c1", shape=(16, 16, 16))
    code, _, err = run_cli("predict", "--model", run, "--case", case, "--out", tmp_path / "o", *extra)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --uncertainty") and needle in err
    assert not (tmp_path / "o").exists()


def test_batch_writes_one_map_per_case(tmp_path, run, run_cli):
    from brats_seg.core.hashing import sha256_file
    from brats_seg.ingest.stage import ingest

    for i in range(2):
        make_case(tmp_path / "src", f"case{i}", shape=(18, 16, 16), seed=i)
    ingest([tmp_path / "src"], tmp_path / "raw.json")
    args = ["predict", "--model", run, "--manifest", tmp_path / "raw.json", "--out", tmp_path / "p", "--tta"]
    code, _, err = run_cli(*args, "--uncertainty", "x.nii.gz")
    assert code == 2 and "takes no PATH with --manifest" in err
    code, _, err = run_cli(*args, "--uncertainty")
    assert code == 0, err
    manifest = json.loads((tmp_path / "p" / "predictions.json").read_text())
    for entry in manifest["cases"]:
        assert entry["uncertainty"] == f"uncertainty/{entry['id']}.nii.gz"
        assert entry["uncertainty_sha256"] == sha256_file(tmp_path / "p" / entry["uncertainty"])
        assert set(entry["uncertainty_mean"]) == {"WT", "TC", "ET"}
    header = (tmp_path / "p" / "volumes.csv").read_text().splitlines()[0]
    assert header.endswith("WT_uncertainty,TC_uncertainty,ET_uncertainty")
    code, _, err = run_cli(*args, "--uncertainty")
    assert code == 0 and "0 done, 2 skipped" in err
    code, _, err = run_cli(*args, "--qa")  # the same cases without the map: the old maps must go
    assert code == 0 and "2 done, 0 skipped" in err, err
    assert not any((tmp_path / "p" / "uncertainty").glob("*.nii.gz"))
    assert all("uncertainty" not in e for e in json.loads((tmp_path / "p" / "predictions.json").read_text())["cases"])
    code, _, err = run_cli(*args)
    assert code == 0 and not any((tmp_path / "p" / "qa").glob("*.png")), err
