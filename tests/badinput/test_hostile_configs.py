"""Hostile configs (issue "hostile inputs"): YAML limits (alias bomb, recursive alias, deep nesting),
config values that pass the type checks but not a range, checkpoint metadata, non-finite numbers in
training and prediction, and training arrays that disagree with their manifest.

Bad values end with exit 2 and one `error:` line naming the key (or the file); a non-finite loss ends
training with exit 1 and a line naming the step, with no checkpoint holding non-finite weights;
predict refuses a model with non-finite weights and writes no mask. Inputs stay byte-identical.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.badinput.builders import snapshot
from tests.badinput.hostile_builders import (CASES, best, build_workspace, call, copy_workspace, error_lines,
                                             one_error_line, run_bounded, untouched)

HYP = settings(max_examples=5, deadline=None, phases=[Phase.explicit, Phase.generate],
               suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("hostile_configs") / "ws", train=True)


@pytest.fixture
def ws(base, tmp_path) -> Path:
    return copy_workspace(base, tmp_path / "ws")


def _train(ws: Path, out: Path, *overrides, config: Path | None = None, data: Path | None = None) -> list:
    return ["train", "--config", config or ws / "train.yaml", "--data", data or ws / "pre" / "preprocessed.json",
            "--out", out, *overrides]


_counter = [0]


def _fresh(ws: Path) -> Path:
    _counter[0] += 1
    return ws / f"new_run_{_counter[0]}"


# ---------------------------------------------------------------------------------------------- YAML limits

BOMB = """\
workdir: w
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
stages:
  - stage: synth
    out: data
    cases: 1
    shape: *i
"""


def test_yaml_alias_bomb_in_a_pipeline_is_refused_in_bounded_memory(ws):
    path = ws / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 700
    before = snapshot(ws)
    res = run_bounded(["run", path, "--workdir", ws / "new_workdir"], ws, timeout=60, max_rss_mb=600)
    assert res["killed"] is None, f"brats-seg run on a 600-byte alias bomb: {res['killed']}"
    one_error_line(res["code"], res["err"], path)
    untouched(before, ws, ws / "new_workdir")


RUN_HEAD = "workdir: w\nstages:\n  - stage: synth\n    out: data\n    cases: 1\n"


def _recursive_alias(command: str) -> str:
    if command == "run":
        return RUN_HEAD + "    shape: &s [32, 32, *s]\n"
    return "task: 3d\nmodel: &m\n  features: [4, 8]\n  self: *m\n"


def _deep_nesting(command: str) -> str:
    nest = "[" * 20_000 + "]" * 20_000
    return RUN_HEAD + f"    shape: {nest}\n" if command == "run" else f"task: 3d\nmodel:\n  features: {nest}\n"


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("text", [_recursive_alias, _deep_nesting], ids=lambda f: f.__name__.lstrip("_"))
def test_yaml_recursion_is_one_line(ws, run_cli, text, command):
    path = ws / "hostile.yaml"
    path.write_text(text(command))
    argv = ["run", path, "--workdir", ws / "new_workdir"] if command == "run" else _train(ws, _fresh(ws), config=path)
    before = snapshot(ws)
    code, _, err = call(run_cli, *argv)
    one_error_line(code, err, path)
    untouched(before, ws, ws / "new_workdir", *ws.glob("new_run_*"))


# ---------------------------------------------------------------------------------------------- config ranges

def _refused(ws: Path, run_cli, key: str, *overrides) -> None:
    before = snapshot(ws)
    out = _fresh(ws)
    code, _, err = call(run_cli, *_train(ws, out, *overrides))
    one_error_line(code, err, key)
    untouched(before, ws, out)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


@HYP
@given(seed=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64, max_value=10**30)))
@example(seed=-1)
@example(seed=10**20)
def test_seed_out_of_range_is_refused(base, tmp_path_factory, run_cli, seed):
    ws = copy_workspace(base, tmp_path_factory.mktemp("seed") / "ws")
    _refused(ws, run_cli, "seed", f"seed={seed}")


@HYP
@given(beta1=st.floats(1.0, 100.0), beta2=st.floats(0.0, 0.99))
@example(beta1=2.0, beta2=2.0)
def test_betas_out_of_range_are_refused(base, tmp_path_factory, run_cli, beta1, beta2):
    ws = copy_workspace(base, tmp_path_factory.mktemp("betas") / "ws")
    _refused(ws, run_cli, "optim.betas", f"optim.betas=[{beta1!r},{beta2!r}]")


@HYP
@given(value=st.floats(min_value=-1e3, max_value=-1e-6))
def test_negative_weight_decay_is_refused(base, tmp_path_factory, run_cli, value):
    ws = copy_workspace(base, tmp_path_factory.mktemp("wd") / "ws")
    _refused(ws, run_cli, "optim.weight_decay", f"optim.weight_decay={value!r}")


@HYP
@given(value=st.floats(min_value=-1e3, max_value=-1e-6))
def test_negative_noise_is_refused(base, tmp_path_factory, run_cli, value):
    ws = copy_workspace(base, tmp_path_factory.mktemp("noise") / "ws")
    _refused(ws, run_cli, "augment.noise_std", "augment.enabled=true", "augment.noise_prob=1.0",
             f"augment.noise_std={value!r}")


@HYP
@given(low=st.floats(min_value=-10.0, max_value=-0.1), width=st.floats(0.0, 5.0))
@example(low=-1.0, width=0.5)
def test_negative_gamma_range_is_refused(base, tmp_path_factory, run_cli, low, width):
    ws = copy_workspace(base, tmp_path_factory.mktemp("gamma") / "ws")
    _refused(ws, run_cli, "augment.gamma_range", "augment.enabled=true", "augment.gamma_prob=1.0",
             f"augment.gamma_range=[{low!r},{low + width!r}]")


@pytest.mark.parametrize("value", [0, -1])
def test_sliding_window_batch_size_below_one_is_refused_before_training(ws, run_cli, value):
    _refused(ws, run_cli, "validation.sw_batch_size", "data.fold=0", f"validation.sw_batch_size={value}")


@pytest.mark.parametrize("value", ["1e400", "inf", "nan"])
def test_learning_rate_that_is_not_finite_is_refused(ws, run_cli, value):
    _refused(ws, run_cli, "optim.lr", f"optim.lr={value}")


# ---------------------------------------------------------------------------------------------- non-finite training

def _checkpoints_are_finite(run: Path) -> None:
    import torch

    for path in sorted((run / "checkpoints").glob("*.pt")) if (run / "checkpoints").is_dir() else []:
        state = torch.load(path, weights_only=True)["model"]
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert bad == [], f"{path} holds non-finite weights: {bad[:3]}"


def _stops_on_non_finite(code: int, err: str, *exit2_names: str) -> None:
    """exit 1 with one error line naming the step, or (the input is caught up front) exit 2 naming it."""
    assert "Traceback" not in err, err[-3000:]
    assert code in (1, 2), f"non-finite training must not exit {code}; stderr: {err[-1500:]!r}"
    lines = error_lines(err)
    assert len(lines) == 1, err
    if code == 1:
        assert "step" in lines[0], lines[0]
    else:
        assert any(n in lines[0] for n in exit2_names), lines[0]


def test_non_finite_loss_ends_training_with_exit_1(ws, run_cli):
    """lr 1e38 is finite and positive, but one step takes the weights past float32: the loss turns
    non-finite. Training stops (exit 1, naming the step) and keeps no checkpoint with non-finite weights."""
    before = snapshot(ws)
    out = _fresh(ws)
    code, _, err = call(run_cli, *_train(ws, out, "optim.lr=1e38", "train.max_steps=4"))
    _stops_on_non_finite(code, err, "optim.lr")
    _checkpoints_are_finite(out)
    untouched(before, ws, out)


def _pre_arrays(ws: Path, key: str):
    manifest = json.loads((ws / "pre" / "preprocessed.json").read_text())
    return [(c, ws / "pre" / c[key]) for c in manifest["cases"]]


def _rewrite_array(ws: Path, key: str, fn, update_sha: bool) -> list[Path]:
    """Apply fn to every case's `key` array (all cases: a one-step run reads any of them); optionally record
    the new sha256 in preprocessed.json (and entry.json), as an editing user would."""
    import hashlib

    paths = []
    manifest_path = ws / "pre" / "preprocessed.json"
    manifest = json.loads(manifest_path.read_text())
    for case in manifest["cases"]:
        path = ws / "pre" / case[key]
        arr = np.load(path)
        np.save(path, fn(arr))
        paths.append(path)
        if update_sha:
            case["sha256"][key] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry = path.parent / "entry.json"
            if entry.is_file():
                data = json.loads(entry.read_text())
                if isinstance(data.get("sha256"), dict):
                    data["sha256"][key] = case["sha256"][key]
                    entry.write_text(json.dumps(data, indent=2))
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return paths


def _nan(arr):
    arr = np.array(arr, copy=True)
    arr[(slice(None),) * (arr.ndim - 1) + (0,)] = np.nan  # a whole channel
    return np.asfortranarray(arr)


def test_nan_image_array_with_a_stale_sha256_is_refused(ws, run_cli):
    paths = _rewrite_array(ws, "image", _nan, update_sha=False)
    before = snapshot(ws)
    out = _fresh(ws)
    code, _, err = call(run_cli, *_train(ws, out))
    line = one_error_line(code, err)
    assert any(str(p) in line for p in paths) or "image.npy" in line, line
    _checkpoints_are_finite(out)
    untouched(before, ws, out)


def test_nan_image_array_with_its_own_sha256_stops_training(ws, run_cli):
    _rewrite_array(ws, "image", _nan, update_sha=True)
    before = snapshot(ws)
    out = _fresh(ws)
    code, _, err = call(run_cli, *_train(ws, out))
    _stops_on_non_finite(code, err, "image.npy", "NaN", *CASES)
    _checkpoints_are_finite(out)
    untouched(before, ws, out)


def _two_channels(arr):
    return np.asfortranarray(np.array(arr)[..., :2])


def _label_7(arr):
    arr = np.array(arr, copy=True)
    arr[(0,) * arr.ndim] = 7  # (reshape(-1) of a Fortran-order array is a copy: writing into it changed nothing)
    return np.asfortranarray(arr)


@pytest.mark.parametrize("key,fn", [("image", _two_channels), ("seg", _label_7)], ids=["two_channel_image", "label_7"])
def test_training_array_that_disagrees_with_the_manifest_is_refused(ws, run_cli, key, fn):
    _rewrite_array(ws, key, fn, update_sha=True)
    before = snapshot(ws)
    out = _fresh(ws)
    code, _, err = call(run_cli, *_train(ws, out))
    line = one_error_line(code, err)
    assert f"{key}.npy" in line or any(c in line for c in CASES), line
    untouched(before, ws, out)


# ---------------------------------------------------------------------------------------------- checkpoint metadata

def _edit_meta(path: Path, fn) -> Path:
    import torch

    payload = torch.load(path, weights_only=True)
    fn(payload)
    torch.save(payload, path)
    return path


def _set(key, value):
    def fn(payload):
        if value is _MISSING:
            payload["meta"].pop(key, None)
        else:
            payload["meta"][key] = value
        if key == "spacing":
            payload["meta"]["preprocess"] = {**payload["meta"].get("preprocess", {}), "spacing": value}
    fn.__name__ = f"{key}={'missing' if value is _MISSING else value}"
    return fn


_MISSING = object()
META_EDITS = [_set("loss_mode", _MISSING), _set("loss_mode", "dice"), _set("patch_size", [0, 0, 0]),
              _set("patch_size", [7, 7, 7]), _set("patch_size", "abc"), _set("channels", ["t1", "t1ce", "t2"]),
              _set("spacing", "abc"), _set("spacing", [0, 0, 0]), _set("spacing", [-2, -2, -2])]


def _predict_refuses(ws, run_cli, ckpt) -> None:
    """predict with the edited checkpoint: one error line naming it, no mask, nothing touched."""
    out = ws / "new_mask.nii.gz"
    before = snapshot(ws)
    code, _, err = call(run_cli, "predict", "--model", ws / "run", "--case", ws / "src" / CASES[0], "--out", out,
                        "--threads", 1)
    one_error_line(code, err, ckpt)
    assert not out.exists()
    untouched(before, ws)


@pytest.mark.parametrize("edit", META_EDITS, ids=lambda f: f.__name__)
def test_checkpoint_meta_out_of_range_is_refused_by_predict(ws, run_cli, edit):
    ckpt = _edit_meta(best(ws), edit)
    _predict_refuses(ws, run_cli, ckpt)


def test_model_with_nan_weights_is_refused_by_predict(ws, run_cli):
    def poison(payload):
        first = next(k for k, v in payload["model"].items() if v.is_floating_point())
        payload["model"][first] = payload["model"][first].clone().fill_(float("nan"))

    ckpt = _edit_meta(best(ws), poison)
    _predict_refuses(ws, run_cli, ckpt)


def test_init_from_with_matching_meta_but_mismatched_tensors_is_one_line(ws, run_cli):
    import torch

    source = ws / "other.pt"
    payload = torch.load(ws / "train" / "checkpoints" / "latest.pt", weights_only=True)
    key = next(k for k, v in payload["model"].items() if v.ndim == 5)
    payload["model"][key] = torch.zeros(tuple(n + 1 for n in payload["model"][key].shape))
    torch.save(payload, source)
    before = snapshot(ws)
    out = _fresh(ws)
    code, _, err = call(run_cli, *_train(ws, out, f"model.init_from={source}"))
    one_error_line(code, err, source)
    untouched(before, ws, out)
