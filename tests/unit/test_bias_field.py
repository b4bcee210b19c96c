"""Bias-field augmentation (augment.bias_field_prob): a smooth cubic log-field, the darkest voxel kept,
its rate, off by default without changing the sample stream, and its config ranges and hash."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from brats_seg.engine.config import config_hash
from brats_seg.engine.loader import sample_rng
from brats_seg.errors import InputError
from brats_seg.seg3d.augment import (BIAS_POWERS, BIAS_TERMS, apply_bias_field, augment_intensity,
                                     bias_log_field)
from brats_seg.seg3d.config import AugmentConfig, Config3D, load_config
from tests.train_fixtures import TINY

ONLY_FIELD = AugmentConfig(brightness_prob=0, contrast_prob=0, gamma_prob=0, noise_prob=0, bias_field_prob=1.0)


def test_terms_are_the_nineteen_non_constant_cubic_products():
    assert BIAS_TERMS == 19 == len(set(BIAS_POWERS))
    assert all(0 < sum(p) <= 3 for p in BIAS_POWERS)


def test_one_term_is_its_legendre_polynomial_along_its_axis():
    coeffs = np.zeros((2, BIAS_TERMS))
    coeffs[0, BIAS_POWERS.index((1, 0, 0))] = 0.5  # 0.5 * P1(x) = 0.5 x
    coeffs[1, BIAS_POWERS.index((0, 0, 2))] = 1.0  # P2(z) = (3 z^2 - 1) / 2
    field = bias_log_field((5, 3, 4), coeffs)
    x, z = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    np.testing.assert_allclose(field[0], np.broadcast_to(0.5 * x[:, None, None], (5, 3, 4)), atol=1e-6)
    np.testing.assert_allclose(field[1], np.broadcast_to((1.5 * z**2 - 0.5)[None, None, :], (5, 3, 4)), atol=1e-6)


def test_field_is_smooth_and_bounded_by_its_coefficients():
    rng = np.random.default_rng(1)
    coeffs = rng.uniform(-0.2, 0.2, size=(4, BIAS_TERMS))
    field = bias_log_field((32, 32, 32), coeffs)
    assert field.dtype == np.float32 and field.shape == (4, 32, 32, 32)
    assert np.abs(field).max() <= 0.2 * BIAS_TERMS  # |P_n| <= 1 on [-1, 1]
    step = 2 / 31  # grid spacing on [-1, 1]; |P_n'| <= n(n+1)/2 <= 6 there: neighbours differ by little
    assert np.abs(np.diff(field, axis=1)).max() <= 0.2 * BIAS_TERMS * 6 * step


def test_apply_keeps_the_darkest_voxel_and_scales_the_rest_by_the_gain():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((2, 6, 6, 6)).astype(np.float32)
    before = image.copy()
    coeffs = rng.uniform(-0.3, 0.3, size=(2, BIAS_TERMS))
    apply_bias_field(image, coeffs)
    gain = np.exp(bias_log_field((6, 6, 6), coeffs))
    for c in range(2):
        lo = before[c].min()
        np.testing.assert_allclose(image[c], lo + (before[c] - lo) * gain[c], rtol=1e-5, atol=1e-5)
        assert image[c].min() == pytest.approx(lo)


def test_rate_follows_the_probability():
    cfg = replace(ONLY_FIELD, bias_field_prob=0.3)
    changed = 0
    for i in range(400):
        image = np.random.default_rng(i).standard_normal((4, 4, 4, 4)).astype(np.float32)
        before = image.copy()
        augment_intensity(image, sample_rng(0, 0, 0, i), cfg)
        changed += not np.array_equal(image, before)
    assert abs(changed / 400 - 0.3) < 0.07


def test_off_draws_nothing_so_old_runs_keep_their_sample_stream():
    """At 0 the step takes no random number: a sample, and every draw after it, is what it was."""
    for cfg in (AugmentConfig(), replace(AugmentConfig(), bias_field_coeff=1.0)):
        rng = sample_rng(0, 0, 0, 7)
        image = np.ones((4, 4, 4, 4), np.float32)
        augment_intensity(image, rng, cfg)
        reference = sample_rng(0, 0, 0, 7)
        augment_intensity(np.ones((4, 4, 4, 4), np.float32), reference, AugmentConfig())
        assert rng.random() == reference.random()


@pytest.mark.parametrize("key,value", [("bias_field_prob", "1.5"), ("bias_field_prob", "-0.1"),
                                       ("bias_field_coeff", "-0.1"), ("bias_field_coeff", "3")])
def test_out_of_range_values_are_refused_by_name(key, value):
    with pytest.raises(InputError, match=f"augment.{key}"):
        load_config(None, [*TINY, f"augment.{key}={value}"])


def test_config_hash_unchanged_when_off_and_changed_when_on():
    base = config_hash(Config3D())
    assert config_hash(load_config(None, ["augment.bias_field_prob=0", "augment.bias_field_coeff=0.2"])) == base
    assert config_hash(load_config(None, ["augment.bias_field_prob=0.3"])) != base
    assert config_hash(load_config(None, ["augment.bias_field_coeff=0.5"])) != base


def test_a_field_with_augmentation_off_is_refused_not_ignored():
    with pytest.raises(InputError, match="augment.bias_field_prob.*augment.enabled"):
        load_config(None, [*TINY, "augment.bias_field_prob=0.3", "augment.enabled=false"])


def test_named_channels_get_the_field_and_the_others_keep_their_values():
    """[t1, t2, flair] leaves t1ce as acquired, and the channels it changes are what "all" makes of them."""
    image = np.random.default_rng(3).standard_normal((4, 6, 6, 6)).astype(np.float32)
    everywhere, some = image.copy(), image.copy()
    augment_intensity(everywhere, sample_rng(0, 0, 0, 5), ONLY_FIELD)
    augment_intensity(some, sample_rng(0, 0, 0, 5), ONLY_FIELD, bias_channels=(0, 2, 3))
    np.testing.assert_array_equal(some[1], image[1])
    np.testing.assert_array_equal(some[[0, 2, 3]], everywhere[[0, 2, 3]])
    assert not np.array_equal(some[0], image[0])


def test_channel_names_resolve_in_the_data_order_and_a_misnamed_one_is_refused():
    from brats_seg.seg3d.data import bias_channel_indices

    channels = ["t1", "t1ce", "t2", "flair"]
    assert bias_channel_indices(("all",), channels) is None
    assert bias_channel_indices(("flair", "t1"), channels) == (3, 0)
    with pytest.raises(InputError, match="augment.bias_field_channels.*'t1c' is not a channel"):
        bias_channel_indices(("t1", "t1c"), channels)


@pytest.mark.parametrize("value,problem", [("[t1, t1]", "named twice"), ("[all, t2]", "alone"),
                                           ("[]", "empty list")])
def test_bad_channel_lists_are_refused_by_name(value, problem):
    with pytest.raises(InputError, match=f"augment.bias_field_channels.*{problem}"):
        load_config(None, [*TINY, f"augment.bias_field_channels={value}"])


def test_channel_choice_is_hashed_only_when_it_is_not_all():
    base = config_hash(Config3D())
    assert config_hash(load_config(None, ["augment.bias_field_channels=[all]"])) == base
    assert config_hash(load_config(None, ["augment.bias_field_channels=[t1, t2, flair]"])) != base


def test_train_refuses_a_channel_the_data_lacks_before_writing_a_run(tmp_path, run_cli):
    from tests.train_fixtures import make_dataset

    manifest = make_dataset(tmp_path / "pp", n_cases=2)
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text("task: 3d\n")
    code, _, err = run_cli("train", "--config", config, "--data", manifest, "--out", out, *TINY, "train.epochs=1",
                           "train.steps_per_epoch=1", "augment.bias_field_prob=0.5",
                           "augment.bias_field_channels=[t1, adc]")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "augment.bias_field_channels" in err and "'adc' is not a channel" in err
    assert not (out / "checkpoints").exists()
