"""AMP choice and determinism on CUDA, tested without a GPU by patching what torch reports.

bf16 only where it is native (compute capability >= 8), whatever torch.cuda.is_bf16_supported()
says (true on V100/T4 through emulation); otherwise fp16 with an enabled GradScaler and one
warning line. The dtype training autocasts to lands in the model metadata of both tasks.
"""
from __future__ import annotations

import pytest
import torch

from brats_seg.engine import runtime
from brats_seg.engine.runtime import amp_dtype, amp_name, configure_runtime, make_scaler

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.fixture()
def gpu(monkeypatch):
    """A fake CUDA device; set `.capability` to pick its generation."""
    class Fake:
        capability = (8, 0)

    fake = Fake()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: fake.capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"FakeGPU sm{fake.capability[0]}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what V100/T4 answer too
    return fake


@pytest.mark.parametrize("setting", ["auto", "bf16", "fp16", "none"])
def test_no_amp_on_cpu(setting, capsys):
    assert amp_dtype(setting, CPU) is None and amp_name(setting, CPU) is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0), (10, 0)])
@pytest.mark.parametrize("setting", ["auto", "bf16"])
def test_bf16_where_native(gpu, capability, setting, capsys):
    gpu.capability = capability
    assert amp_dtype(setting, CUDA) == torch.bfloat16 and amp_name(setting, CUDA) == "bf16"
    assert capsys.readouterr().err == ""
    assert not make_scaler(CUDA, torch.bfloat16).is_enabled()  # bf16 has fp32's range


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (6, 1)])
@pytest.mark.parametrize("setting", ["auto", "bf16"])
def test_fp16_with_scaler_and_one_warning_on_older_gpus(gpu, capability, setting, capsys):
    gpu.capability = capability
    dtype = amp_dtype(setting, CUDA)
    assert dtype == torch.float16  # although is_bf16_supported() says True
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and f"train.amp={setting}" in err
    assert f"{capability[0]}.{capability[1]}" in err and "fp16" in err and "GradScaler" in err
    assert make_scaler(CUDA, dtype).is_enabled()
    assert amp_name(setting, CUDA) == "fp16" and capsys.readouterr().err == ""  # the meta's query is quiet


def test_explicit_fp16_and_none(gpu, capsys):
    gpu.capability = (9, 0)
    assert amp_dtype("fp16", CUDA) == torch.float16 and amp_dtype("none", CUDA) is None
    assert amp_name("fp16", CUDA) == "fp16" and amp_name("none", CUDA) is None
    assert capsys.readouterr().err == ""


def test_warning_only_from_rank_zero(gpu, monkeypatch, capsys):
    import torch.distributed as dist

    gpu.capability = (7, 0)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    assert amp_dtype("bf16", CUDA) == torch.float16 and capsys.readouterr().err == ""
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    amp_dtype("bf16", CUDA)
    assert capsys.readouterr().err.count("warning:") == 1


@pytest.fixture()
def runtime_flags(monkeypatch):
    """configure_runtime's global switches, recorded and restored."""
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    switches = ((torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32"),
                (torch.backends.cuda.matmul, "allow_tf32"))
    saved = [getattr(module, name) for module, name in switches]
    yield calls
    for (module, name), value in zip(switches, saved):
        setattr(module, name, value)


def test_deterministic_on_cuda_says_it_is_not_bit_exact(runtime_flags, capsys):
    configure_runtime(0, True, CUDA)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: train.deterministic=true on CUDA")
    assert "trilinear" in err and "bit-identical" in err
    assert runtime_flags == [(True, True)] and torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("deterministic, device", [(True, CPU), (False, CUDA), (False, CPU)])
def test_no_determinism_warning_otherwise(runtime_flags, capsys, deterministic, device):
    configure_runtime(0, deterministic, device)
    assert capsys.readouterr().err == ""
    assert runtime_flags == ([(True, True)] if deterministic else [])
    if device.type == "cuda":
        assert torch.backends.cudnn.benchmark is True


def test_3d_meta_records_the_training_amp_dtype(gpu, tmp_path, capsys):
    from brats_seg.seg3d.config import load_config
    from brats_seg.seg3d.data import open_dataset
    from brats_seg.seg3d.trainer import build_3d
    from tests.train_fixtures import TINY, make_dataset

    data = open_dataset(make_dataset(tmp_path, n_cases=2, shape=(16, 16, 16)), load_config(None, TINY))
    expected = {((8, 0), "auto"): "bf16", ((7, 0), "bf16"): "fp16", ((9, 0), "fp16"): "fp16",
                ((9, 0), "none"): None}
    for (capability, setting), name in expected.items():
        gpu.capability = capability
        cfg = load_config(None, [*TINY, f"train.amp={setting}"])
        assert build_3d(cfg, data, CUDA).meta.amp_dtype == name
        assert build_3d(cfg, data, CPU).meta.amp_dtype is None  # AMP runs on CUDA only
    assert capsys.readouterr().err == ""  # the engine warns once, when it picks the dtype; the meta does not


def test_2d_meta_records_the_training_amp_dtype(gpu, tmp_path):
    from brats_seg.seg2d.trainer import build_2d

    class Data:  # what model_meta_2d reads of a Data2D
        class train:
            num_classes = 3

            class labels:
                ignore_index = 255

    from brats_seg.seg2d.config import load_config_2d

    cfg = load_config_2d(None, ["model.backbone=mobilenet_v2", "model.width_mult=0.25",
                                "model.aspp_channels=8", "train.amp=bf16"])
    gpu.capability = (7, 5)
    assert build_2d(cfg, Data, None, fresh=True, device=CUDA).meta.amp_dtype == "fp16"
    gpu.capability = (8, 9)
    assert build_2d(cfg, Data, None, fresh=True, device=CUDA).meta.amp_dtype == "bf16"
    assert build_2d(cfg, Data, None, fresh=True).meta.amp_dtype is None


def test_runtime_amp_names_match_the_meta_values():
    from brats_seg.engine.model_meta import AMP_DTYPES

    assert tuple(runtime.AMP_NAMES.values()) == AMP_DTYPES
