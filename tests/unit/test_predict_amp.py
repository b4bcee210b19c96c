"""predict --amp: the autocast dtype chosen per device, setting and training dtype (torch.cuda's
capability queries monkeypatched, so this runs on CPU), and CPU ignoring the setting."""
from __future__ import annotations

import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.infer import precision
from brats_seg.infer.model_spec import ModelSpec
from brats_seg.infer.precision import inference_dtype
from brats_seg.infer.segmenter import Segmenter

CUDA = torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a GPU of compute capability `gpu(major)`."""
    def set_capability(major: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"FakeGPU sm{major}0")
    return set_capability


@pytest.mark.parametrize("setting, trained, major, expected, warns", [
    ("auto", None, 9, None, False),  # trained in float32 (and every old checkpoint): float32
    ("auto", "bf16", 8, torch.bfloat16, False),
    ("auto", "bf16", 7, None, True),  # V100/T4: no native bf16 -> float32, never fp16
    ("auto", "fp16", 7, torch.float16, False),
    ("fp16", None, 7, torch.float16, False),
    ("fp16", "bf16", 9, torch.float16, True),  # the user's choice, with the overflow warning
    ("bf16", None, 9, torch.bfloat16, False),
    ("bf16", "fp16", 6, None, True),
    ("none", "bf16", 9, None, False),
])
def test_dtype_choice_on_cuda(gpu, capsys, setting, trained, major, expected, warns):
    gpu(major)
    assert inference_dtype(setting, CUDA, trained) == expected
    err = capsys.readouterr().err
    assert (err.startswith("warning: ") and err.count("\n") == 1) if warns else err == ""


@pytest.mark.parametrize("setting", ["auto", "fp16", "bf16", "none"])
def test_cpu_ignores_the_setting(setting, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: pytest.fail("CUDA queried on CPU"))
    assert inference_dtype(setting, torch.device("cpu"), "bf16") is None


def test_unknown_setting_is_refused():
    with pytest.raises(InputError, match="--amp"):
        inference_dtype("fp8", torch.device("cpu"))


def test_segmenter_records_precision_and_follows_the_model():
    spec = ModelSpec("regions", ("t1", "t1ce", "t2", "flair"), (8, 8, 8), amp_dtype="bf16")
    seg = Segmenter(torch.nn.Conv3d(4, 3, 1), spec, amp="fp16")
    assert seg.autocast is None and seg.settings()["precision"] == "fp32"  # CPU: float32
    assert precision.NAMES[torch.bfloat16] == "bf16"


def test_cli_flag_choices(tmp_path, run_cli):
    with pytest.raises(SystemExit) as stop:  # argparse's usage error: one line, exit 2
        run_cli("predict", "--model", tmp_path, "--case", tmp_path, "--out", tmp_path / "o", "--amp", "fp8")
    assert stop.value.code == 2


@pytest.mark.gpu
def test_bf16_model_on_a_real_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    spec = ModelSpec("regions", ("t1", "t1ce", "t2", "flair"), (16, 16, 16), amp_dtype="bf16")
    seg = Segmenter(torch.nn.Conv3d(4, 3, 1), spec, device="cuda")
    native = torch.cuda.get_device_capability()[0] >= 8
    assert seg.autocast == (torch.bfloat16 if native else None)
    assert torch.backends.cudnn.benchmark
    y = seg._forward(torch.randn(2, 4, 16, 16, 16, device="cuda"))
    assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
