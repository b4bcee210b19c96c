"""ModelMeta: one typed checkpoint identity for both tasks; a model of the other task ends in one
`error:` line; old 3D metas (no task) still load; 2D runs written before memory_format became a
run-control key still resume."""
from __future__ import annotations

import pytest
import torch

from brats_seg.engine import checkpoint as ckpt
from brats_seg.engine.config import config_hash
from brats_seg.engine.model_meta import ModelMeta
from brats_seg.errors import InputError
from tests.run_fixtures import make_tiny_run

torch.set_num_threads(1)

META_2D = {"task": "2d", "model": "fcn32s", "model_kwargs": {"num_classes": 2, "backbone": "vgg16"},
           "num_classes": 2, "ignore_index": 255, "class_names": ["a", "b"]}


@pytest.fixture()
def run_2d(tmp_path):
    """A 2D run folder; the weights do not matter, the meta is refused before the model is built."""
    ckpt.save_best(tmp_path / "run2d", {}, META_2D, {})
    return tmp_path / "run2d"


def test_old_3d_meta_without_task_loads_as_3d(tmp_path):
    run = make_tiny_run(tmp_path / "run")  # the meta training wrote before the 2D task: no "task"
    model, meta = ckpt.load_model(run, task="3d")
    assert meta.task == "3d" and meta.channels == ["t1", "t1ce", "t2", "flair"] and not model.training
    assert ModelMeta.from_dict(meta.to_dict(), "x") == meta  # the stored dict round-trips


def test_2d_meta_round_trips():
    meta = ModelMeta.from_dict(META_2D, "x", task="2d")
    assert meta.num_classes == 2 and meta.loss_mode is None
    assert ModelMeta.from_dict(meta.to_dict(), "x") == meta


def test_3d_inference_refuses_a_2d_run(run_2d, tmp_path, run_cli):
    from brats_seg.infer.runs import load_run_model

    with pytest.raises(InputError, match="not a 3D checkpoint.*predict2d"):
        load_run_model(run_2d, torch.device("cpu"))
    code, _, err = run_cli("predict", "--model", run_2d, "--case", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and "not a 3D checkpoint" in err


@pytest.mark.parametrize("command", ["predict2d", "evaluate2d", "quantize"])
def test_2d_commands_refuse_a_3d_run(command, tmp_path, run_cli):
    run = make_tiny_run(tmp_path / "run")
    args = {"predict2d": ["--images", tmp_path, "--out", tmp_path / "o"],
            "evaluate2d": ["--data", tmp_path, "--out", tmp_path / "o"],
            "quantize": ["--data", tmp_path, "--out", tmp_path / "int8.pt"]}[command]
    code, _, err = run_cli(command, "--model", run, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and "not a 2D checkpoint" in err


@pytest.mark.parametrize("field, value", [("patch_size", [8, 8]), ("loss_mode", "softmax"), ("model_kwargs", 3),
                                          ("task", "4d"), ("format_version", 99), ("amp_dtype", "fp8"),
                                          ("amp_dtype", True)])
def test_bad_field_names_the_file_and_the_field(tmp_path, field, value):
    run = make_tiny_run(tmp_path / "run")
    path = ckpt.checkpoint_dir(run) / ckpt.BEST
    payload = torch.load(path, weights_only=True)
    ckpt.save_best(run, payload["model"], {**payload["meta"], field: value}, {})
    with pytest.raises(InputError, match=field) as err:
        ckpt.load_model(run)
    assert str(path) in str(err.value)


def test_missing_field_is_an_input_error(tmp_path):
    ckpt.save_best(tmp_path, {}, {"model": "attention_unet3d", "model_kwargs": {}}, {})
    with pytest.raises(InputError, match="lacks field 'loss_mode'"):
        ckpt.load_inference_model(tmp_path)


def test_config_hashes_of_existing_runs_stay_accepted():
    """3D hashes are unchanged; a 2D checkpoint of the old hash (memory_format counted) still resumes."""
    from brats_seg.seg2d.config import legacy_config_hash, load_config_2d
    from brats_seg.seg3d.config import Config3D

    assert config_hash(Config3D()) == "851a3052b444f8cadab8339bea0e83c86264b1d9be62669d1682c4f80f254f92"
    cfg = load_config_2d(None)
    old = "0aacc4bb74f9477c9e085ff5f2c3abcb81728b03a577be0cb11c24becfa77f80"  # the 2D hash before the change
    assert legacy_config_hash(cfg) == old
    ckpt.check_compatible({"config_hash": old, "data_sha256": "d"}, "x", config_hash(cfg), "d", (old,))
    assert config_hash(load_config_2d(None, ["train.memory_format=channels_last"])) == config_hash(cfg)


def test_old_checkpoints_have_no_amp_dtype(tmp_path):
    run = make_tiny_run(tmp_path / "run")  # written before the field existed
    _, meta = ckpt.load_model(run, task="3d")
    assert meta.amp_dtype is None and "amp_dtype" not in meta.to_dict()  # None: trained in float32


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_dtype_survives_a_weights_only_checkpoint(tmp_path, amp):
    from dataclasses import replace

    run = make_tiny_run(tmp_path / "run")
    model, meta = ckpt.load_model(run, task="3d")
    ckpt.save_best(run, model.state_dict(), replace(meta, amp_dtype=amp).to_dict(), {})
    payload = torch.load(ckpt.checkpoint_dir(run) / ckpt.BEST, weights_only=True)
    assert payload["meta"]["amp_dtype"] == amp  # a plain str in the plain dict
    assert ckpt.load_model(run, task="3d")[1].amp_dtype == amp
    assert ModelMeta.from_dict({**META_2D, "amp_dtype": amp}, "x", task="2d").amp_dtype == amp
