"""bench infer: its pure helpers against MONAI's own code, and one tiny side-by-side run end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brats_seg.bench.infer import (_window_counts, bench_infer, forward_gflop, matmul_peak_gflops,
                                   monai_window_count, ras_to_file, region_agreement)


@pytest.mark.parametrize("shape,roi,overlap", [
    ((240, 240, 155), (128, 128, 128), 0.5),
    ((48, 40, 32), (24, 24, 24), 0.5),
    ((37, 29, 41), (16, 16, 16), 0.25),
    ((20, 128, 130), (32, 128, 128), 0.75),  # smaller than the roi, equal, one voxel longer
    ((64, 64, 64), (16, 16, 16), 0.0),
])
def test_monai_window_count_matches_monai_scan(shape, roi, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = [max(s, r) for s, r in zip(shape, roi)]  # sliding_window_inference pads up to the roi
    interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
    assert monai_window_count(shape, roi, overlap) == len(dense_patch_slices(padded, roi, interval))


def test_monai_window_count_on_a_brats_volume_is_18():
    assert monai_window_count((240, 240, 155), (128,) * 3, 0.5) == 3 * 3 * 2


def test_window_counts_count_windows_not_batches():
    counts = _window_counts({(2, 4, 136, 128, 128): 3, (1, 4, 136, 128, 128): 1, (1, 4, 128, 128, 128): 2})
    assert counts["windows"] == 9 and counts["forward_calls"] == 6
    assert counts["window_shapes"] == {"136x128x128": 7, "128x128x128": 2}


def test_region_agreement_hand_computed():
    ours = np.zeros((4, 4, 4), np.uint8)
    ref = np.zeros_like(ours)
    ours[0, 0, :2] = 3  # ET (also TC and WT): 2 voxels
    ref[0, 0, :1] = 3  # ET: 1 voxel
    ref[1, 1, 1] = 2  # ED: WT only
    scores = region_agreement(ours, ref)
    assert scores["ET"] == pytest.approx(2 * 1 / 3)
    assert scores["TC"] == pytest.approx(2 * 1 / 3)
    assert scores["WT"] == pytest.approx(2 * 1 / 4)
    assert scores["mean"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert region_agreement(np.zeros_like(ours), np.zeros_like(ours))["mean"] == 1.0  # both empty: agree


@pytest.mark.parametrize("affine", [
    np.diag([-1.0, -1.0, 1.0, 1.0]),  # LPS, like BraTS files
    np.array([[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, -1.5, 0, 0], [0, 0, 0, 1]]),  # axes permuted and flipped
])
def test_ras_to_file_undoes_monai_orientation(affine):
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    data = np.random.default_rng(0).random((2, 5, 6, 7)).astype(np.float32)
    ras = Orientation(axcodes="RAS", labels=None)(MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine)))
    assert tuple(ras.shape) != data.shape or not np.array_equal(np.asarray(ras), data)
    np.testing.assert_array_equal(ras_to_file(np.asarray(ras), affine), data)
    np.testing.assert_array_equal(ras_to_file(np.asarray(ras)[0], affine), data[0])  # 3D as well


def test_matmul_peak_is_positive():
    assert matmul_peak_gflops(1, n=128, repeats=2) > 0


def test_window_gflop_counts_the_network(tiny_run):
    flops = forward_gflop(tiny_run, [(1, 4, 16, 16, 16), (1, 4, 32, 32, 32)])
    small, large = flops[(1, 4, 16, 16, 16)], flops[(1, 4, 32, 32, 32)]
    assert small > 0 and large == pytest.approx(8 * small, rel=0.05)  # convolutions: linear in voxels


@pytest.fixture
def tiny_run(tmp_path):
    """A run dir whose best.pt holds an untrained attention U-Net with features (4, 8, 16)."""
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(tmp_path / "run", tumour_bias=False, deep_supervision=False)


def test_bench_infer_tiny_case_end_to_end(tmp_path, tiny_run):
    from brats_seg.synth.phantoms import synthesize_case

    case = synthesize_case("Tiny_0000", tmp_path / "data", seed=0, shape=(48, 48, 32))
    out = tmp_path / "bench" / "infer.json"
    report = bench_infer(tiny_run, case, threads=1, out=out, window=24, repeats=1)
    saved = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("| side |")
    for key in ("ours", "monai", "ratio", "agreement", "matmul_peak_gflops", "forward_gflop", "targets", "met"):
        assert key in saved
    for side in ("ours", "monai"):
        for key in ("wall_s", "network_s", "peak_rss_gb", "windows", "network_gflops", "peak_share"):
            assert saved[side][key] > 0, (side, key)
    assert saved["monai"]["windows"] == saved["monai"]["windows_expected"]
    assert saved["ours"]["windows"] == _our_window_count(tiny_run, case, 24)
    assert set(saved["agreement"]) == {"WT", "TC", "ET", "mean"}
    assert all(0.0 <= v <= 1.0 for v in saved["agreement"].values())
    diagnosis = saved["diagnosis"]  # an untrained net sits at 0.5 everywhere: only the shape is checked here
    assert all(0.0 <= v <= 1.0 for v in diagnosis["agreement_same_crop"].values())
    assert set(diagnosis["dice_vs_truth"]) == {"ours", "monai", "monai_same_crop"}  # synth cases have a label file
    assert report["ratio"] == pytest.approx(saved["ratio"])


@pytest.mark.parametrize("affine_kind", ["lps", "oblique"])
def test_sides_agree_exactly_with_a_pointwise_model(tmp_path, affine_kind):
    """A 1x1x1 network sees no context, so window placement cannot matter: any disagreement would be
    the harness's (normalisation, orientation, restoring to the file grid), not the model's."""
    from brats_seg.bench.infer import case_files, monai_chain, monai_predict
    from brats_seg.infer.segmenter import ModelSpec, Segmenter
    from brats_seg.synth.phantoms import synthesize_case

    case = synthesize_case("Point_0000", tmp_path, seed=1, shape=(48, 40, 32), affine_kind=affine_kind)
    net = _pointwise_net()
    spec = ModelSpec("regions", ("t1", "t1ce", "t2", "flair"), (16, 16, 16))
    ours = Segmenter(net, spec).predict(case).labels
    reference, _ = monai_predict(case_files(case, spec.channels), monai_chain(), net, 16, "regions")
    assert ours.shape == reference.shape and len(np.unique(ours)) == 4  # every label present: a real check
    np.testing.assert_array_equal(ours, reference)
    assert region_agreement(ours, reference)["mean"] == 1.0


def test_crop_reference_harness_is_exact_with_a_pointwise_model(tmp_path, tiny_run, monkeypatch):
    """MONAI over our prepared crop, put back by our inverse: with no context, it equals our predict."""
    from brats_seg.bench.infer_checks import crop_reference_labels, truth_labels
    from brats_seg.infer.segmenter import Segmenter
    from brats_seg.synth.phantoms import synthesize_case

    case = synthesize_case("Point_0001", tmp_path, seed=2, shape=(48, 40, 32), affine_kind="oblique")
    seg = Segmenter.from_run(tiny_run)
    net = _pointwise_net()
    seg.model = net
    monkeypatch.setattr(Segmenter, "from_run", classmethod(lambda cls, path, **kw: seg))  # the pointwise net
    ours = Segmenter(net, seg.spec, grow=0.0).predict(case).labels
    crop = crop_reference_labels(tiny_run, case, 16, threads=1)
    assert len(np.unique(ours)) == 4
    np.testing.assert_array_equal(crop, ours)
    truth = truth_labels(case, ["t1", "t1ce", "t2", "flair"])
    assert truth is not None and truth.shape == ours.shape and truth.max() <= 3


def _pointwise_net() -> torch.nn.Module:
    """A 1x1x1 network: WT from FLAIR, TC and ET from T1ce; background (all-zero input) stays 0."""
    net = torch.nn.Conv3d(4, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0, 0, 0, 3.0], [0, 2.0, 0, 0], [0, 3.0, 0, 0]]).reshape(3, 4, 1, 1, 1))
        net.bias.copy_(torch.tensor([-2.0, -1.0, -3.0]))
    return net


def _our_window_count(run, case, window: int) -> int:
    """Windows our sliding window places on the prepared volume (brain-only), counted independently."""
    import dataclasses

    from brats_seg.infer.prepare import from_case_dir, prepare
    from brats_seg.infer.segmenter import Segmenter
    from brats_seg.infer.sliding_window import place_windows, window_size

    seg = Segmenter.from_run(run)
    seg = Segmenter(seg.model, dataclasses.replace(seg.spec, patch_size=(window,) * 3))
    image, _ = prepare(from_case_dir(case, list(seg.spec.channels)), "native")
    assert min(image.shape[1:]) >= window  # no padding to account for
    size = window_size(image.shape[1:], seg.window)
    return len(place_windows(image.shape[1:], seg.window, torch.from_numpy(image != 0).any(dim=0), size))
