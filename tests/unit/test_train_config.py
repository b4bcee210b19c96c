"""Training config (YAML + overrides, type errors), split, LR schedules and region Dice."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.evaluate.dice import dice_per_region, mean_dice
from brats_seg.io.regions import dice_per_region_torch
from brats_seg.engine.config import ScheduleConfig, config_hash
from brats_seg.seg3d.config import Config3D, load_config
from brats_seg.engine.schedule import LRSchedule
from brats_seg.seg3d.split import kfold_split

torch.set_num_threads(1)
PIPELINES = Path(__file__).resolve().parents[2] / "pipelines" / "train"


@pytest.mark.parametrize("name", ["train_gpu_brats", "train_cpu", "train_demo"])
def test_shipped_recipes_load(name):
    cfg = load_config(PIPELINES / f"{name}.yaml")
    assert cfg.task == "3d" and cfg.loss.mode == "regions"


def test_gpu_recipe_is_full_scale():
    cfg = load_config(PIPELINES / "train_gpu_brats.yaml")
    assert cfg.data.patch_size == (128, 128, 128) and cfg.train.amp == "bf16"
    assert cfg.model.deep_supervision and cfg.train.epochs * cfg.train.steps_per_epoch >= 75_000


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\noptim:\n  lr: 3e-4\n  name: adamw\ndata:\n  patch_size: 64\n")
    cfg = load_config(path, ["optim.lr=1e-3", "model.features=[4, 8, 16]", "train.progress=false",
                             "data.patch_size=[32,32,16]"])
    assert cfg.seed == 3 and cfg.optim.name == "adamw" and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model.features == (4, 8, 16) and cfg.train.progress is False
    assert cfg.data.patch_size == (32, 32, 16)
    assert load_config(path).data.patch_size == (64, 64, 64)  # a single int fills the tuple
    assert load_config(path).optim.lr == pytest.approx(3e-4)  # YAML's "3e-4" string is read as a float


@pytest.mark.parametrize("override, where", [
    ("optim.lrr=0.1", "optim.lrr"),
    ("bogus.lr=0.1", "bogus"),
    ("optim.lr=fast", "optim.lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.progress=1", "train.progress"),
    ("optim.name=adam", "optim.name"),
    ("data.patch_size=[64,64]", "data.patch_size"),
    ("data.patch_size=[60,64,64]", "data.patch_size"),  # not divisible by 2**4 for 5 levels
    ("optim=3", "optim"),
    ("optim.lr", "optim.lr"),
    ("data.fold=7", "data.fold"),
    ("data.outside=0.75", "data.outside"),
    ("train.memory_format=nhwc", "train.memory_format"),
])
def test_bad_overrides_are_input_errors(override, where):
    with pytest.raises(InputError) as err:
        load_config(None, [override])
    assert err.value.where == where
    assert "\n" not in err.value.line()


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(InputError, match="valid keys under train: epochs"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(path)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_ignores_run_control_only():
    base = config_hash(Config3D())
    assert config_hash(load_config(None, ["train.time_budget_s=60", "data.num_workers=0",
                                          "train.memory_format=contiguous"])) == base
    assert config_hash(load_config(None, ["optim.lr=0.02"])) != base
    assert config_hash(load_config(None, ["data.fold=1"])) != base


def test_kfold_split_is_deterministic_and_disjoint():
    ids = [f"c{i}" for i in range(11)]
    folds = [kfold_split(ids, 5, k, seed=0) for k in range(5)]
    assert sorted(sum((f["val"] for f in folds), [])) == sorted(ids)  # every case validated exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 11
    assert kfold_split(list(reversed(ids)), 5, 2, seed=0) == folds[2]  # manifest order does not matter
    assert kfold_split(ids, 5, 2, seed=1)["val"] != folds[2]["val"]
    assert kfold_split(ids, 5, -1, seed=0)["val"] == []
    with pytest.raises(InputError):
        kfold_split(["a", "b"], 5, 4, seed=0)


def _lrs(cfg: ScheduleConfig, total: int, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, cfg, total)
    out = [sched.lr]
    for _ in range(steps):
        sched.step()
        out.append(sched.lr)
    return out


def test_schedules():
    poly = _lrs(ScheduleConfig(name="poly", poly_power=0.9), 10, 10)
    assert poly[0] == 1.0 and poly[5] == pytest.approx(0.5 ** 0.9) and poly[10] == 0.0
    cos = _lrs(ScheduleConfig(name="cosine"), 10, 10)
    assert cos[5] == pytest.approx(0.5) and cos[10] == pytest.approx(0.0, abs=1e-12)
    warm = _lrs(ScheduleConfig(name="constant", warmup_steps=4), 10, 6)
    assert warm[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    floor = _lrs(ScheduleConfig(name="poly", min_lr=0.1), 10, 10)
    assert floor[10] == pytest.approx(0.1)


def test_plateau_and_state_round_trip():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, ScheduleConfig(name="plateau", plateau_patience=2, plateau_factor=0.5), 100)
    for metric in (0.5, 0.6, 0.6, 0.6):
        sched.observe(metric)
    assert sched.lr == 1.0
    sched.observe(0.59)  # third validation without improvement > patience 2
    assert sched.lr == 0.5
    state = sched.state_dict()
    other = LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), sched.cfg, 100)
    other.load_state_dict(state)
    assert other.lr == 0.5 and other.state_dict() == state


def test_region_dice_by_hand():
    ref = np.array([0, 1, 2, 3, 3, 0])
    pred = np.array([0, 1, 2, 2, 3, 3])
    # WT: ref {1,2,3,4}, pred {1,2,3,4,5} -> 2*4/9; TC: ref {1,3,4}, pred {1,4,5} -> 2*2/6; ET: ref {3,4}, pred {4,5} -> 2*1/4
    d = dice_per_region(pred, ref)
    assert d == pytest.approx({"WT": 8 / 9, "TC": 4 / 6, "ET": 0.5})
    assert mean_dice(d) == pytest.approx((8 / 9 + 4 / 6 + 0.5) / 3)
    t = dice_per_region_torch(torch.from_numpy(pred), torch.from_numpy(ref))
    assert t.tolist() == pytest.approx([8 / 9, 4 / 6, 0.5])
    empty = dice_per_region(np.zeros(4, int), np.zeros(4, int))
    assert empty == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    missed = dice_per_region(np.zeros(4, int), np.array([0, 0, 3, 0]))
    assert missed["ET"] == 0.0 and not math.isnan(missed["ET"])
    assert dice_per_region_torch(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 3, 0])).tolist() == [0, 0, 0]


def test_split_seed_deals_the_folds_apart_from_the_run_seed(tmp_path):
    """data.split_seed fixes the folds while the seed changes the weights and patches; -1 (default)
    keeps the old rule (the run's seed deals them) and the old config hash."""
    from brats_seg.seg3d.config import split_seed
    from brats_seg.seg3d.data import open_dataset
    from tests.train_fixtures import TINY, make_dataset

    manifest = make_dataset(tmp_path, n_cases=6)
    split = {s: open_dataset(manifest, load_config(None, [*TINY, f"seed={s}", "data.split_seed=7"])).split["val"]
             for s in (0, 1)}
    assert split[0] == split[1]
    default = {s: open_dataset(manifest, load_config(None, [*TINY, f"seed={s}"])).split["val"] for s in (0, 1, 2)}
    assert len({tuple(v) for v in default.values()}) > 1  # the run seed deals them by default
    assert split_seed(load_config(None, ["seed=5"])) == 5 and split_seed(load_config(None, ["data.split_seed=3"])) == 3
    assert config_hash(load_config(None, ["data.split_seed=-1"])) == config_hash(load_config(None, []))
    assert config_hash(load_config(None, ["data.split_seed=0"])) != config_hash(load_config(None, []))
    with pytest.raises(InputError, match="data.split_seed"):
        load_config(None, ["data.split_seed=-2"])
