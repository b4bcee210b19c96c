"""The /dev/shm check at loader start, with a fake statvfs: Docker's 64 MB refuses the GPU recipe's
loader with one line naming /dev/shm, the sizes and the fixes; enough space, no workers or no
/dev/shm pass without a word."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from brats_seg.engine import shm
from brats_seg.engine.shm import batch_bytes, check_shared_memory, loader_need, suggest_size
from brats_seg.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")
GPU_SAMPLE_BYTES = 4 * 128**3 * 4 + 128**3 + 3 * 8 + 8  # image float32, label uint8, centre int64, fg_class


class Keyed(Dataset):
    """Samples shaped like the GPU recipe's (4 x 128^3 float32 image, uint8 label), counted."""

    def __init__(self) -> None:
        self.drawn: list = []

    def __len__(self) -> int:
        return 1

    def __getitem__(self, key):
        self.drawn.append(key)
        return {"image": torch.empty(4, 128, 128, 128), "label": torch.empty(128, 128, 128, dtype=torch.uint8),
                "centre": torch.zeros(3, dtype=torch.int64), "fg_class": 1, "case": "c"}


def _fake_statvfs(monkeypatch, free: int | None) -> list:
    calls = []

    def statvfs(path):
        calls.append(str(path))
        if free is None:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)
    monkeypatch.setattr(shm.os, "statvfs", statvfs)
    return calls


def _loader(workers: int, batch: int = 2) -> DataLoader:
    return DataLoader(Keyed(), batch_size=batch, num_workers=workers, prefetch_factor=2 if workers else None)


def test_batch_bytes_counts_every_tensor_and_number():
    assert batch_bytes(Keyed()[(0, 0, 0)], 2) == 2 * GPU_SAMPLE_BYTES  # 71 MB (67 MB of it the image): more than Docker's 64 MiB
    assert loader_need(100, num_workers=8, prefetch_factor=2, local_ranks=4) == 17 * 100 * 4


def test_docker_default_is_refused_with_the_fixes(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    calls = _fake_statvfs(monkeypatch, 64 * 2**20)
    with pytest.raises(InputError) as err:
        check_shared_memory(_loader(8), rank=0)
    line = err.value.line()
    assert calls == ["/dev/shm"] and line.startswith("error: /dev/shm: 67 MB free")
    assert "needs about 1.21 GB" in line and "(8 workers x prefetch 2 + 1) batches of 71 MB" in line
    assert "--shm-size=2g" in line and "--ipc=host" in line and "data.num_workers=0" in line
    assert "\n" not in line


def test_ranks_of_a_node_share_dev_shm(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    _fake_statvfs(monkeypatch, 2 * 2**30)  # enough for one rank's 1.21 GB, not for four
    with pytest.raises(InputError, match="x 4 ranks on this node"):
        check_shared_memory(_loader(8), rank=1)


def test_enough_space_no_workers_or_no_dev_shm_pass(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    _fake_statvfs(monkeypatch, 2 * 2**30)
    loader = _loader(8)
    check_shared_memory(loader, rank=3)
    assert loader.dataset.drawn == [(0, 3, 0)]  # the rank's first key: shapes of a real sample
    calls = _fake_statvfs(monkeypatch, 1)
    plain = _loader(0)
    check_shared_memory(plain, rank=0)
    assert calls == [] and plain.dataset.drawn == []  # no workers: nothing checked, nothing drawn
    _fake_statvfs(monkeypatch, None)
    check_shared_memory(_loader(2), rank=0)


def test_suggested_sizes():
    assert suggest_size(100 * 2**20) == "256m" and suggest_size(700 * 2**20) == "1024m"
    assert suggest_size(int(1.14e9)) == "2g" and suggest_size(5 * 2**30) == "7g"


def test_stream_loader_checks_before_workers_start(monkeypatch, tmp_path):
    """The engine's loader runs the check: a 3D run with workers and too little /dev/shm stops there."""
    from brats_seg.engine.loader import stream_loader
    from brats_seg.seg3d.config import load_config
    from brats_seg.seg3d.loader import PatchDataset
    from tests.train_fixtures import TINY, make_dataset

    path = make_dataset(tmp_path, n_cases=1)
    entries = json.loads(path.read_text())["cases"]
    cfg = load_config(None, [*TINY, "data.num_workers=2"])
    dataset = PatchDataset(tmp_path, entries, cfg.data.patch_size, 0.0, None, seed=0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    _fake_statvfs(monkeypatch, 4096)
    with pytest.raises(InputError, match="/dev/shm"):
        stream_loader(dataset, cfg, 0, torch.device("cpu"))
    _fake_statvfs(monkeypatch, 2**30)
    loader, _ = stream_loader(dataset, cfg, 0, torch.device("cpu"))
    assert loader.num_workers == 2
