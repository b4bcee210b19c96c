"""Modality dropout (augment.modality_dropout): the rate, never every channel, exact zeros after the
other intensity steps, a pure function of the sample key, and what the config and metadata record."""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from brats_seg.engine.config import config_hash
from brats_seg.engine.loader import sample_rng
from brats_seg.engine.model_meta import ModelMeta
from brats_seg.errors import InputError
from brats_seg.seg3d.augment import augment_intensity, drop_modalities
from brats_seg.seg3d.config import AugmentConfig, Config3D, load_config
from tests.train_fixtures import TINY, make_dataset

META_3D = {"model": "attention_unet3d", "model_kwargs": {"in_channels": 4, "features": [4, 8]},
           "loss_mode": "regions", "patch_size": [8, 8, 8], "channels": ["t1", "t1ce", "t2", "flair"]}


def _dropped(prob: float, n: int = 4000) -> list[tuple[int, ...]]:
    out = []
    for i in range(n):
        image = np.ones((4, 2, 2, 2), np.float32)
        zeroed = drop_modalities(image, sample_rng(0, 0, 0, i), prob)
        assert [c for c in range(4) if not image[c].any()] == list(zeroed)  # what it says it zeroed
        out.append(zeroed)
    return out


def test_rate_and_never_all_channels():
    drops = _dropped(0.3)
    rate = sum(bool(d) for d in drops) / len(drops)
    assert abs(rate - 0.3) < 0.03
    assert all(len(d) < 4 for d in drops)  # never all four
    subsets = Counter(d for d in drops if d)
    proper = [s for r in (1, 2, 3) for s in itertools.combinations(range(4), r)]
    assert set(subsets) == set(proper)  # every non-empty proper subset occurs, nothing else
    assert min(subsets.values()) > 0.5 * len(drops) * 0.3 / 14  # roughly uniform over the 14


def test_no_dropout_draws_nothing():
    rng, ref = sample_rng(0, 1, 0, 5), sample_rng(0, 1, 0, 5)
    image = np.ones((4, 2, 2, 2), np.float32)
    assert drop_modalities(image, rng, 0.0) == () and image.all()
    assert rng.random() == ref.random()  # the stream of a run without dropout is unchanged


def test_dropped_channels_stay_exactly_zero_after_noise_and_contrast():
    cfg = AugmentConfig(brightness_prob=1.0, contrast_prob=1.0, gamma_prob=1.0, noise_prob=1.0, modality_dropout=0.99)
    dropped = 0
    for i in range(20):
        image = np.random.default_rng(i).normal(size=(4, 6, 6, 6)).astype(np.float32)
        augment_intensity(image, sample_rng(3, 0, 0, i), cfg)
        zero = [c for c in range(4) if not image[c].any()]  # exactly 0: no noise came back
        assert len(zero) < 4 and all(image[c].std() > 0 for c in range(4) if c not in zero)
        dropped += bool(zero)
    assert dropped >= 18  # p = 0.99


def test_patch_stream_is_a_pure_function_of_the_key(tmp_path):
    from brats_seg.seg3d.loader import PatchDataset
    from brats_seg.io.manifest import load_manifest

    path = make_dataset(tmp_path, n_cases=2, shape=(20, 20, 20))
    entries = load_manifest(path, stage="preprocessed")["cases"]
    cfg = AugmentConfig(modality_dropout=0.5)
    one, two = (PatchDataset(tmp_path, entries, (8, 8, 8), 0.5, cfg, seed=7) for _ in range(2))
    keys = [(e, 0, i) for e in range(2) for i in range(12)]
    zeroed = 0
    for key in reversed(keys):  # another order, another instance: the same samples
        a, b = one[key]["image"].numpy(), two[key]["image"].numpy()
        np.testing.assert_array_equal(a, b)
        zeroed += sum(not a[c].any() for c in range(4))
    assert zeroed > 0  # dropout happened
    off = PatchDataset(tmp_path, entries, (8, 8, 8), 0.5, AugmentConfig(), seed=7)
    assert all(off[k]["image"].numpy()[c].any() for k in keys for c in range(4))  # off: no empty channel


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_out_of_range_is_refused(value):
    with pytest.raises(InputError, match="augment.modality_dropout"):
        load_config(None, [*TINY, f"augment.modality_dropout={value}"])


def test_dropout_without_augmentation_is_refused():
    with pytest.raises(InputError, match="augment.modality_dropout.*augment.enabled"):
        load_config(None, [*TINY, "augment.modality_dropout=0.25", "augment.enabled=false"])


def test_config_hash_unchanged_at_zero_and_changed_above():
    base = Config3D()
    assert config_hash(base) == config_hash(load_config(None, ["augment.modality_dropout=0"]))
    assert config_hash(load_config(None, ["augment.modality_dropout=0.25"])) != config_hash(base)


def test_meta_records_it_and_old_checkpoints_load():
    old = ModelMeta.from_dict(dict(META_3D), "old.pt", task="3d")
    assert old.modality_dropout == 0.0  # written before the field existed
    new = ModelMeta.from_dict(replace(old, modality_dropout=0.25).to_dict(), "new.pt", task="3d")
    assert new.modality_dropout == 0.25
    for bad in (1.0, -0.5, "0.2", True, float("nan")):
        with pytest.raises(InputError, match="modality_dropout"):
            ModelMeta.from_dict({**META_3D, "modality_dropout": bad}, "bad.pt", task="3d")


def test_trainer_meta_carries_the_config_value(tmp_path):
    from brats_seg.seg3d.data import open_dataset
    from brats_seg.seg3d.trainer import build_3d

    path = make_dataset(tmp_path, n_cases=2, shape=(16, 16, 16))
    cfg = load_config(None, [*TINY, "augment.modality_dropout=0.3", "data.fold=-1"])
    assert build_3d(cfg, open_dataset(path, cfg)).meta.modality_dropout == 0.3
