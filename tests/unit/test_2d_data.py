"""2D data: VOC palette, label decoding, joint augmentation alignment, dataset listing and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from brats_seg.errors import InputError
from brats_seg.seg2d import transforms as T
from brats_seg.seg2d.data import SegmentationDataset, build_dataset, folder_pairs, load_pair, voc_pairs
from brats_seg.seg2d.labels import LabelSpec, ade20k_labels, camvid_labels, voc_colour_labels, voc_labels
from brats_seg.seg2d.palette import colour_to_index, index_to_colour, to_palette_image, voc_palette

torch.set_num_threads(1)

# ------------------------------------------------------------------------------- palette
def test_voc_palette_known_entries():
    p = voc_palette(256)
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
             17: (128, 64, 0), 20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in known.items():
        assert tuple(p[index]) == colour, index
    assert len({tuple(c) for c in p}) == 256


def test_colour_to_index_unknown_and_ignore_colours():
    p = voc_palette(21)
    rgb = np.array([[p[0], p[1], p[20]], [(224, 224, 192), (1, 2, 3), p[15]]], dtype=np.uint8)
    assert colour_to_index(rgb, p).tolist() == [[0, 1, 20], [255, 255, 15]]
    assert colour_to_index(rgb, p, ignore_index=99).tolist() == [[0, 1, 20], [99, 99, 15]]
    with pytest.raises(InputError, match=r"\(1, 2, 3\)"):
        colour_to_index(rgb, p, strict=True)


def test_index_colour_round_trip_and_palette_png(tmp_path):
    mask = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    assert np.array_equal(colour_to_index(index_to_colour(mask), voc_palette(21)), mask)
    to_palette_image(mask).save(tmp_path / "m.png")
    reread = Image.open(tmp_path / "m.png")
    assert reread.mode == "P" and np.array_equal(np.asarray(reread), mask)


# ------------------------------------------------------------------------------- labels
def test_label_specs_decode():
    assert camvid_labels().decode(np.array([[0, 10, 11]])).tolist() == [[0, 10, 255]]
    assert camvid_labels(ignore_unlabelled=False).decode(np.array([[11]])).tolist() == [[11]]
    assert ade20k_labels().decode(np.array([[0, 1, 150]])).tolist() == [[255, 0, 149]]
    assert ade20k_labels(reduce_zero_label=False).decode(np.array([[0, 150]])).tolist() == [[0, 150]]
    assert voc_labels().decode(np.array([[0, 20, 255]])).tolist() == [[0, 20, 255]]
    assert LabelSpec(4, ignore_index=9).decode(np.array([[3, 9]])).tolist() == [[3, 9]]


def test_label_values_outside_classes_raise():
    with pytest.raises(InputError, match=r"mask values \[21, 40\]"):
        voc_labels().decode(np.array([[0, 21, 40]]), "x.png")
    with pytest.raises(InputError, match="colour"):
        voc_labels().decode(np.zeros((2, 2, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- augmentation
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1],
                        [0.1, 0.9, 0.9], [0.9, 0.1, 0.9]])


def _block_sample(h=96, w=128, block=16, seed=0):
    """Image of flat coloured blocks whose mask is the block's class: mask = f(image colour)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, len(COLOURS), (h // block, w // block), generator=g)
    mask = classes.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = COLOURS[mask].permute(2, 0, 1).contiguous()
    return image, mask


def _class_from_colour(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest class colour for every pixel of an un-normalised image, and whether it is exact.

    Pixels at block edges are bilinear blends of two colours ("impure"); a blend can sit closer
    to a third colour, so only pure pixels say which class the image shows there.
    """
    d = ((image.permute(1, 2, 0)[:, :, None, :] - COLOURS[None, None]) ** 2).sum(-1)
    best = d.min(-1)
    return best.indices, best.values < 1e-6


def _denormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(T.IMAGENET_STD).view(3, 1, 1) + torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)


def test_crop_pad_flip_keep_exact_alignment():
    torch.manual_seed(1)
    image, mask = _block_sample(40, 56, block=8)
    aug = T.Compose([T.RandomCrop(64, ignore_index=255, fill=-1.0), T.RandomHorizontalFlip(1.0)])
    out_img, out_mask = aug(image, mask)
    assert out_img.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    labelled = out_mask != 255
    assert int(labelled.sum()) == 40 * 56
    classes, pure = _class_from_colour(out_img)
    assert bool(pure[labelled].all()) and torch.equal(classes[labelled], out_mask[labelled])
    assert bool((out_img[:, ~labelled] == -1.0).all())  # padding got the fill value
    assert torch.equal(out_mask[:40, 64 - 56:], mask.flip(-1))  # flipped, padding at the right -> left


@pytest.mark.parametrize("seed", range(8))
def test_full_training_augmentation_keeps_image_and_mask_aligned(seed):
    torch.manual_seed(seed)
    image, mask = _block_sample(seed=seed)
    aug = T.train_transform(crop_size=80, scale=(0.6, 1.6), rotate_degrees=15, jitter=0.0)
    out_img, out_mask = aug(image, mask)
    assert out_img.shape == (3, 80, 80) and out_mask.dtype == torch.int64
    labelled = out_mask != 255
    assert int(labelled.sum()) > 0.3 * out_mask.numel()
    classes, pure = _class_from_colour(_denormalise(out_img))
    checked = labelled & pure
    assert int(checked.sum()) > 0.4 * int(labelled.sum())  # enough pixels lie inside a block
    assert torch.equal(classes[checked], out_mask[checked])  # a one-pixel shift would break this
    assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {255}


def test_rotation_fills_corners_with_ignore():
    torch.manual_seed(0)
    image, mask = _block_sample(64, 64)
    rot = T.RandomRotate(30, ignore_index=255, fill=0.0)
    rot.max_degrees = 30
    outs = [rot(image, mask) for _ in range(5)]
    corners = [m[0, 0] for _, m in outs if abs(float(((m == 255).float().mean()))) > 0.02]
    assert corners and all(int(c) == 255 for c in corners)


def test_scale_resizes_both_with_nearest_mask():
    torch.manual_seed(0)
    image, mask = _block_sample(32, 48, block=8)
    img2, mask2 = T.RandomScale(2.0, 2.0)(image, mask)
    assert img2.shape == (3, 64, 96) and mask2.shape == (64, 96)
    assert torch.equal(mask2, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_colour_jitter_changes_image_only():
    torch.manual_seed(0)
    image, mask = _block_sample()
    out_img, out_mask = T.ColourJitter(0.5, 0.5, 0.5)(image, mask)
    assert torch.equal(out_mask, mask)
    assert not torch.allclose(out_img, image) and out_img.min() >= 0 and out_img.max() <= 1


def test_normalize_uses_imagenet_statistics():
    image = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2).clone()
    out, _ = T.Normalize()(image, torch.zeros(2, 2, dtype=torch.long))
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)


# ------------------------------------------------------------------------------ datasets
def _write_voc(root, ids, size=(40, 30)):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i, name in enumerate(ids):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[5:10, 5:10], mask[0, :] = i + 1, 255
        to_palette_image(mask).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


def test_voc_dataset_items(tmp_path):
    _write_voc(tmp_path, ["a", "b"])
    ds = SegmentationDataset(voc_pairs(tmp_path, "train"), voc_labels())
    item = ds[1]
    assert item["id"] == "b" and item["image"].shape == (3, 30, 40) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) == {0, 2, 255}
    assert len(voc_pairs(tmp_path, None)) == 2


def test_voc_errors(tmp_path):
    _write_voc(tmp_path, ["a"])
    with pytest.raises(InputError, match="val.txt"):
        voc_pairs(tmp_path, "val")
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nmissing\n")
    with pytest.raises(InputError, match="missing"):
        voc_pairs(tmp_path, "train")


def test_unreadable_image_and_size_mismatch(tmp_path):
    _write_voc(tmp_path, ["a", "b"])
    pairs = voc_pairs(tmp_path, "train")
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(InputError, match="cannot read image") as err:
        load_pair(pairs[0], voc_labels())
    assert "a.jpg" in err.value.line()
    to_palette_image(np.zeros((31, 40), np.uint8)).save(tmp_path / "SegmentationClass" / "b.png")
    with pytest.raises(InputError, match=r"mask is 40x31 \(WxH\) but its image b.jpg is 40x30"):
        load_pair(pairs[1], voc_labels())


def test_rgb_mask_with_index_labels_is_rejected(tmp_path):
    _write_voc(tmp_path, ["a"])
    Image.new("RGB", (40, 30)).save(tmp_path / "SegmentationClass" / "a.png")
    with pytest.raises(InputError, match="colour"):
        load_pair(voc_pairs(tmp_path, "train")[0], voc_labels())


def test_folder_pairs_by_stem_and_unmatched(tmp_path):
    for stem in ("1_image", "2_image"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{stem}.png")
    for stem in ("1_target", "2_target"):
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[:4] = voc_palette(21)[1]  # top half aeroplane, bottom half background
        Image.fromarray(rgb).save(tmp_path / f"{stem}.png")
    ds = build_dataset("voc_colour", tmp_path)
    assert [p.id for p in ds.pairs] == ["1", "2"]
    assert set(ds[0]["mask"].unique().tolist()) == {0, 1}
    Image.new("RGB", (8, 8)).save(tmp_path / "3_image.png")
    with pytest.raises(InputError, match=r"images without mask \['3'\]"):
        folder_pairs(tmp_path, tmp_path, "_image", "_target")


def test_colour_dataset_strict_mode(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "1_image.png")
    Image.new("RGB", (8, 8), (5, 5, 5)).save(tmp_path / "1_target.png")
    assert set(build_dataset("voc_colour", tmp_path)[0]["mask"].unique().tolist()) == {255}
    with pytest.raises(InputError, match="not in the palette"):
        build_dataset("voc_colour", tmp_path, strict=True)[0]


def test_training_transform_on_dataset(tmp_path):
    _write_voc(tmp_path, ["a"])
    ds = SegmentationDataset(voc_pairs(tmp_path, "train"), voc_labels(), T.train_transform(48))
    torch.manual_seed(0)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["mask"].shape == (48, 48)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 255}
