"""2D loading on the shared real samples (../shared/datasets): VOC palette PNGs, VOC colour masks,
CamVid label maps, ADE20K annotations. Expected values come from each folder's SOURCE.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brats_seg.seg2d.data import SegmentationDataset, build_dataset, load_pair, read_mask, voc_pairs
from brats_seg.seg2d.labels import voc_colour_labels, voc_labels
from brats_seg.seg2d.palette import voc_palette
from brats_seg.seg2d.transforms import train_transform

torch.set_num_threads(1)

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets not found at {DATASETS}"),
]


def _counts(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_voc_labelme_palette_masks():
    root = DATASETS / "voc2012_labelme_example"
    pairs = voc_pairs(root, split=None)  # this export has no ImageSets
    assert [p.id for p in pairs] == ["2011_000003", "2011_000006", "2011_000025"]
    image, labels = load_pair(pairs[0], voc_labels())
    assert image.shape == (338, 500, 3) and labels.shape == (338, 500)
    assert _counts(labels) == {0: 125767, 5: 873, 15: 32900, 255: 9460}
    assert _counts(load_pair(pairs[2], voc_labels())[1]) == {0: 62022, 6: 118222, 7: 7256}
    palette = np.array(Image.open(pairs[1].mask).getpalette()[: 21 * 3]).reshape(21, 3)
    assert np.array_equal(palette, voc_palette(21))  # our generator matches the file's colour map


def test_voc_colour_targets_through_the_palette():
    root = DATASETS / "voc2012_deeplabv3plus_samples"
    ds = build_dataset("voc_colour", root, strict=True)  # strict: every colour must be known
    expected = {"1": {0, 1, 255}, "23": {0, 17, 255}, "114": {0, 3, 255}}
    assert sorted(p.id for p in ds.pairs) == sorted(expected)
    for pair in ds.pairs:
        _, labels = load_pair(pair, voc_colour_labels(strict=True))
        assert labels.shape == (513, 513) and set(np.unique(labels).tolist()) == expected[pair.id]
        rgb = read_mask(pair.mask, voc_colour_labels())
        assert np.array_equal(rgb[labels == 255][0], [224, 224, 192])


def test_camvid_unlabelled_is_ignored():
    root = DATASETS / "camvid_segnet_samples"
    ds = build_dataset("camvid", root, split="test")
    assert len(ds) == 6 and ds.num_classes == 11
    raw = read_mask(ds.pairs[0].mask, ds.labels)
    assert set(np.unique(raw).tolist()) == {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11}  # 0001TP_008550
    item = ds[0]
    assert item["image"].shape == (3, 360, 480)
    assert torch.equal(item["mask"] == 255, torch.from_numpy(raw == 11))
    assert int(item["mask"][item["mask"] != 255].max()) <= 10
    kept = build_dataset("camvid", root, split="test", ignore_unlabelled=False)
    assert kept.num_classes == 12 and int(kept[0]["mask"].max()) == 11


def test_ade20k_zero_ignored_and_shifted():
    root = DATASETS / "ade20k_sceneparsing_samples"
    ds = build_dataset("ade20k", root)
    assert [p.id for p in ds.pairs] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    assert set(ds[0]["mask"].unique().tolist()) == {255, 0, 1, 2, 4, 6, 9, 17}  # raw {0,1,2,3,5,7,10,18}
    full = build_dataset("ade20k", root, reduce_zero_label=False)
    assert set(full[1]["mask"].unique().tolist()) == {0, 1, 2, 3, 5, 14, 18}


def test_training_augmentation_on_real_samples():
    ds = SegmentationDataset(voc_pairs(DATASETS / "voc2012_labelme_example", None), voc_labels(),
                             train_transform(96))
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 96, 96) and item["mask"].shape == (96, 96)
        raw = set(np.unique(load_pair(ds.pairs[i], voc_labels())[1]).tolist())
        assert set(item["mask"].unique().tolist()) <= raw | {255}
