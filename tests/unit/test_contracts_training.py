"""Training contracts: every numeric config field has a range checked where the config is parsed
(3D and 2D, file and overrides), checkpoint metadata is checked by meaning, and non-finite numbers
stop a run (exit 1, one line naming the step) without a checkpoint that holds non-finite weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brats_seg.core.typed_config import Range, numeric_fields
from brats_seg.engine.model_meta import ModelMeta
from brats_seg.errors import InputError
from brats_seg.seg2d.config import RANGES_2D, Config2D, load_config_2d
from brats_seg.seg3d.config import RANGES_3D, Config3D, load_config

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
TASKS = {"3d": (Config3D, RANGES_3D, load_config), "2d": (Config2D, RANGES_2D, load_config_2d)}


# ---------------------------------------------------------------------------------------------- config ranges

@pytest.mark.parametrize("task", TASKS)
def test_every_numeric_field_has_a_range(task):
    cls, ranges, _ = TASKS[task]
    assert sorted(numeric_fields(cls)) == sorted(ranges)


@pytest.mark.parametrize("task", TASKS)
def test_the_defaults_lie_in_their_ranges(task):
    cls, ranges, load = TASKS[task]
    load(None)  # the default config passes every check


def _outside(rng: Range, draw) -> float:
    """A finite value just outside `rng` (on a side it has)."""
    sides = [s for s in ("low", "high") if getattr(rng, s) is not None]
    side = draw(st.sampled_from(sides))
    bound = getattr(rng, side)
    if getattr(rng, f"{side}_open") and draw(st.booleans()):
        return bound
    step = draw(st.sampled_from([1, 3, 1000]))
    return bound - step if side == "low" else bound + step


def _override(key: str, value: float, cls: type) -> str:
    from brats_seg.core.typed_config import lookup

    default = lookup(cls(), key)
    if isinstance(default, int) and not isinstance(default, bool):
        value = int(math.floor(value)) if value < default else int(math.ceil(value))
    if isinstance(default, tuple):
        return f"{key}=[{', '.join([repr(value)] * len(default))}]"
    return f"{key}={value!r}"


@FAST
@given(data=st.data(), task=st.sampled_from(sorted(TASKS)))
def test_property_a_value_outside_its_range_is_one_line_naming_key_value_and_override(data, task):
    cls, ranges, load = TASKS[task]
    key = data.draw(st.sampled_from(sorted(k for k, r in ranges.items() if r.low is not None or r.high is not None)))
    text = _override(key, _outside(ranges[key], data.draw), cls)
    with pytest.raises(InputError) as err:
        load(None, [text])
    line = err.value.line()
    assert "\n" not in line and err.value.where == key, line
    assert f"override {text}" in line and "expected" in line


@FAST
@given(task=st.sampled_from(sorted(TASKS)), bad=st.sampled_from(["1e400", "-1e400", "inf", ".nan", "-.inf", "nan"]),
       data=st.data())
def test_property_a_non_finite_float_is_refused_everywhere(task, bad, data):
    cls, ranges, load = TASKS[task]
    from brats_seg.core.typed_config import lookup

    floats = sorted(k for k in ranges if isinstance(lookup(cls(), k), float))
    key = data.draw(st.sampled_from(floats))
    with pytest.raises(InputError) as err:
        load(None, [f"{key}={bad}"])
    assert err.value.where == key and "finite" in err.value.line()


@FAST
@given(seed=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)), in_range=st.integers(0, 2**32 - 1))
def test_property_seed_range(seed, in_range):
    assert load_config(None, [f"seed={in_range}"]).seed == in_range
    with pytest.raises(InputError) as err:
        load_config(None, [f"seed={seed}"])
    assert err.value.where == "seed"


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("optim:\n  betas: [0.9, 2.0]\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.where == "optim.betas" and str(path) in err.value.line() and "[0.9, 2.0]" in err.value.line()


@FAST
@given(low=st.floats(-1e6, 1e6), high=st.floats(-1e6, 1e6), value=st.floats(allow_nan=True, allow_infinity=True))
def test_property_range_holds_exactly_its_values(low, high, value):
    lo, hi = min(low, high), max(low, high)
    closed, half_open = Range(lo, hi), Range(lo, hi, high_open=True)
    inside = math.isfinite(value) and lo <= value <= hi
    assert closed.holds(value) == inside
    assert half_open.holds(value) == (inside and value != hi)
    assert Range(ordered=True).holds((lo, hi)) and (lo == hi or not Range(ordered=True).holds((hi, lo)))


# ---------------------------------------------------------------------------------------------- checkpoint meta

def _meta_3d(**changes) -> dict:
    meta = {"task": "3d", "model": "attention_unet3d", "loss_mode": "regions", "patch_size": [32, 32, 32],
            "channels": ["t1", "t1ce", "t2", "flair"], "spacing": [1.0, 1.0, 1.0],
            "preprocess": {"spacing": "native"},
            "model_kwargs": {"in_channels": 4, "out_channels": 3, "features": [4, 8, 16]}}
    meta.update(changes)
    return meta


WHERE = Path("/runs/r/checkpoints/best.pt")


@FAST
@given(size=st.integers(1, 256), channels=st.lists(st.sampled_from(["t1", "t1ce", "t2", "flair"]), min_size=1,
                                                   max_size=4, unique=True))
def test_property_patch_sizes_must_fit_the_network_and_channels_its_inputs(size, channels):
    meta = _meta_3d(patch_size=[size] * 3, channels=channels)
    fits = size % 4 == 0 and len(channels) == 4
    if fits:
        assert ModelMeta.from_dict(meta, WHERE, task="3d").patch_size == [size] * 3
        return
    with pytest.raises(InputError) as err:
        ModelMeta.from_dict(meta, WHERE, task="3d")
    line = err.value.line()
    assert str(WHERE) in line and ("'patch_size'" in line or "'channels'" in line), line


@FAST
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (math.isfinite(v) and v > 0)),
                       st.text(max_size=4), st.none()),
       field=st.sampled_from(["spacing", "preprocess.spacing"]))
def test_property_spacing_must_be_finite_and_positive(value, field):
    spacing = [1.0, value, 1.0]
    meta = _meta_3d(spacing=spacing) if field == "spacing" else _meta_3d(preprocess={"spacing": spacing})
    with pytest.raises(InputError) as err:
        ModelMeta.from_dict(meta, WHERE, task="3d")
    assert str(WHERE) in err.value.line() and repr(field) in err.value.line()


@FAST
@given(field=st.sampled_from(["model", "model_kwargs", "loss_mode", "patch_size"]),
       value=st.one_of(st.just(None), st.integers(), st.text(max_size=5), st.lists(st.integers(-3, 3), max_size=4)))
def test_property_required_fields_missing_or_wrong_are_one_line(field, value):
    meta = _meta_3d()
    if value is None:
        meta.pop(field)
    else:
        meta[field] = value
    try:
        ModelMeta.from_dict(meta, WHERE, task="3d")
    except InputError as err:
        assert str(WHERE) in err.line() and field in err.line() and "\n" not in err.line()


def test_init_from_and_load_refuse_non_finite_weights(tmp_path):
    from brats_seg.engine.checkpoint import load_weights

    model = torch.nn.Linear(2, 2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    weights["weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite weights.*'weight'"):
        load_weights(model, weights, tmp_path / "x.pt")
    with pytest.raises(InputError) as err:
        load_weights(model, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, tmp_path / "x.pt")
    assert "\n" not in err.value.line() and "size mismatch" in err.value.line()


# ---------------------------------------------------------------------------------------------- non-finite runs

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from tests.badinput.hostile_builders import build_workspace

    return build_workspace(tmp_path_factory.mktemp("nonfinite") / "ws")


def _train(workspace: Path, out: Path, *overrides) -> tuple[int, str]:
    from tests.badinput.hostile_builders import cli

    code, _, err = cli("train", "--config", workspace / "train.yaml", "--data", workspace / "pre" / "preprocessed.json",
                       "--out", out, "train.max_steps=3", "train.steps_per_epoch=3", "train.checkpoint_every_steps=1",
                       *overrides)
    return code, err


def _finite_checkpoints(run: Path) -> list[int]:
    steps = []
    for path in sorted((run / "checkpoints").glob("*.pt")):
        payload = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point()), path
        steps.append(payload["progress"]["step"])
    return steps


def test_a_non_finite_loss_stops_with_exit_1_naming_the_step(workspace, tmp_path, monkeypatch):
    import brats_seg.engine.loop as loop

    calls, real = [], loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda state, batches: (calls.append(1), real(state, batches))[1]
                        if len(calls) < 1 else (calls.append(1), float("nan"))[1])
    code, err = _train(workspace, tmp_path / "run")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and "loss is not finite at step 2" in lines[0], err
    assert _finite_checkpoints(tmp_path / "run") == [1]


def test_non_finite_weights_are_never_checkpointed(workspace, tmp_path, monkeypatch):
    import brats_seg.engine.loop as loop

    real = loop.optimizer_step

    def poison(state, grad_clip):
        finite = real(state, grad_clip)
        if state.progress.step == 1:  # the second step's update (progress counts after the step)
            next(iter(state.model.parameters())).data.fill_(float("inf"))
        return finite

    monkeypatch.setattr(loop, "optimizer_step", poison)
    code, err = _train(workspace, tmp_path / "run")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and "weights are not finite at step 2" in lines[0], err
    assert _finite_checkpoints(tmp_path / "run") == [1]
