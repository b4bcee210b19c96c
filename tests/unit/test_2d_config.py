"""2D training config: shipped recipes, YAML + overrides through the shared typed loader, range
checks with one-line errors, the --data YAML form, and the CLI-level argument checks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.engine.config import RUN_CONTROL_KEYS, OptimConfig, config_hash
from brats_seg.seg2d.config import Config2D, load_config_2d, resolve_data_arg
from brats_seg.seg2d.build import model_kwargs

torch.set_num_threads(1)
PIPELINES = Path(__file__).resolve().parents[2] / "pipelines" / "train"


@pytest.mark.parametrize("name", ["voc_deeplabv3plus", "camvid_deeplabv3plus", "camvid_distill_mobilenet"])
def test_shipped_recipes_load(name):
    cfg = load_config_2d(PIPELINES / f"{name}.yaml")
    assert cfg.task == "2d" and cfg.data.batch_size >= 2
    assert isinstance(cfg.optim, OptimConfig)  # the shared section, not a copy


def test_voc_recipe_is_the_paper_setting():
    cfg = load_config_2d(PIPELINES / "voc_deeplabv3plus.yaml")
    assert (cfg.model.name, cfg.model.backbone, cfg.model.output_stride) == ("deeplabv3plus", "resnet50", 16)
    assert cfg.data.crop_size == (512, 512) and cfg.schedule.name == "poly" and cfg.data.format == "voc"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: 2d\nmodel:\n  backbone: resnet18\ndata:\n  crop_size: 96\n  format: camvid\n"
                    "optim:\n  lr: 3e-4\n")
    cfg = load_config_2d(path, ["data.batch_size=4", "loss.dice_weight=0.5", "schedule.name=cosine",
                                "model.aux=true"])
    assert cfg.data.crop_size == (96, 96)  # one int fills the (H, W) tuple
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.data.batch_size == 4
    assert cfg.loss.dice_weight == 0.5 and cfg.schedule.name == "cosine" and cfg.model.aux
    assert cfg.optim.momentum == 0.9  # 2D defaults, not nnU-Net's 0.99


def test_task_defaults_to_2d_and_a_3d_config_is_refused(tmp_path):
    assert load_config_2d(None).task == "2d"
    path = tmp_path / "c.yaml"
    path.write_text("task: 3d\n")
    with pytest.raises(InputError) as err:
        load_config_2d(path)
    assert err.value.where == "task"


@pytest.mark.parametrize("override, where", [
    ("model.bakbone=resnet18", "model.bakbone"),
    ("model.name=unet", "model.name"),
    ("data.crop_size=[64]", "data.crop_size"),
    ("optim.lr=fast", "optim.lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("data.batch_size=1", "data.batch_size"),
    ("model.output_stride=32", "model.output_stride"),
    ("model.backbone=vgg16", "model.backbone"),
    ("data.crop_size=8", "data.crop_size"),
    ("augment.scale_range=[2.0, 1.0]", "augment.scale_range"),
    ("loss.ce_weight=0", "loss.ce_weight"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("data.format=folder", "data.num_classes"),
    ("data.eval_scale=0", "data.eval_scale"),
])
def test_bad_values_name_the_key(override, where):
    with pytest.raises(InputError) as err:
        load_config_2d(None, [override])
    assert err.value.where == where
    assert "\n" not in err.value.line()


def test_batchnorm_needs_two_images_but_fcn_vgg_does_not():
    with pytest.raises(InputError, match="BatchNorm"):
        load_config_2d(None, ["data.batch_size=1"])
    cfg = load_config_2d(None, ["data.batch_size=1", "model.name=fcn8s", "model.backbone=vgg16",
                                "model.output_stride=32"])
    assert cfg.data.batch_size == 1


def test_aux_head_without_its_loss_is_refused(tmp_path):
    """model.aux with loss.aux_weight 0: a head without a gradient fails DDP at step 2, so the config
    is refused up front with one line naming both keys and the fix."""
    path = tmp_path / "c.yaml"
    path.write_text("task: 2d\nmodel:\n  backbone: resnet18\n  aux: true\nloss:\n  aux_weight: 0\n")
    with pytest.raises(InputError) as err:
        load_config_2d(path)
    line = err.value.line()
    assert err.value.where == "model.aux" and "\n" not in line
    assert "loss.aux_weight" in line and "set loss.aux_weight > 0" in line and "model.aux false" in line
    assert load_config_2d(path, ["loss.aux_weight=0.4"]).model.aux  # either fix is accepted
    assert not load_config_2d(path, ["model.aux=false"]).model.aux


def test_folder_ignore_index_must_not_be_a_class():
    with pytest.raises(InputError) as err:
        load_config_2d(None, ["data.format=folder", "data.num_classes=3", "data.ignore_index=2"])
    assert err.value.where == "data.ignore_index"


def test_malformed_override():
    with pytest.raises(InputError, match="section.key=value"):
        load_config_2d(None, ["optim.lr"])


def test_config_hash_ignores_run_control_keys_only():
    base = config_hash(load_config_2d(None), RUN_CONTROL_KEYS)
    assert config_hash(load_config_2d(None, ["train.time_budget_s=60", "data.num_workers=0"]),
                       RUN_CONTROL_KEYS) == base
    assert config_hash(load_config_2d(None, ["optim.lr=0.5"]), RUN_CONTROL_KEYS) != base


def test_model_kwargs_per_family():
    cfg = Config2D()
    assert model_kwargs(cfg.model, 21)["aspp_channels"] == 256
    vgg = load_config_2d(None, ["model.name=fcn32s", "model.backbone=vgg16", "model.output_stride=32"]).model
    assert "output_stride" not in model_kwargs(vgg, 21) and model_kwargs(vgg, 21)["fc_channels"] == 4096
    res = load_config_2d(None, ["model.name=fcn8s", "model.backbone=resnet18", "model.output_stride=8"]).model
    assert model_kwargs(res, 5) == {"num_classes": 5, "backbone": "resnet18", "aux": False, "output_stride": 8,
                                    "width_mult": 1.0}


def test_data_argument_folder_or_yaml(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    assert resolve_data_arg(root) == (root, [])
    spec = tmp_path / "camvid.yaml"
    spec.write_text("root: ds\nformat: camvid\ncrop_size: [32, 48]\n")
    got_root, overrides = resolve_data_arg(spec)
    assert got_root == root.resolve()
    cfg = load_config_2d(None, overrides)
    assert cfg.data.format == "camvid" and cfg.data.crop_size == (32, 48)
    spec.write_text("format: camvid\n")
    with pytest.raises(InputError, match="root"):
        resolve_data_arg(spec)
    with pytest.raises(InputError, match="not found"):
        resolve_data_arg(tmp_path / "missing")


def test_run_training_argument_errors(tmp_path):
    from brats_seg.seg2d.trainer import run_training

    with pytest.raises(InputError) as err:
        run_training(PIPELINES / "voc_deeplabv3plus.yaml", tmp_path, tmp_path / "run", 2, False, [])
    assert err.value.where == "--fold"
    with pytest.raises(InputError) as err:
        run_training(None, tmp_path, tmp_path / "run", None, False, [])
    assert err.value.where == "--config"


def test_full_image_prediction_runs_without_cudnn_autotuning():
    """Variable-size validation / predict images: cudnn.benchmark is off in the forward, restored
    after (also when the forward fails)."""
    from brats_seg.seg2d.evaluate import predict_logits_2d

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.benchmark)
            if x.shape[-1] == 13:
                raise RuntimeError("boom")
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        assert predict_logits_2d(Probe(), torch.zeros(1, 3, 17, 19)).shape == (1, 2, 17, 19)
        assert torch.backends.cudnn.benchmark is True
        with pytest.raises(RuntimeError, match="boom"):
            predict_logits_2d(Probe(), torch.zeros(1, 3, 11, 13))
        assert torch.backends.cudnn.benchmark is True and seen == [False, False]
    finally:
        torch.backends.cudnn.benchmark = before
