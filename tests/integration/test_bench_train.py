"""`bench train`'s MONAI references: they feed the same patches (shape, canonical labels) as our
loader, the tutorial one from the raw files through the run's resampling; and a one-step bench
reports every ratio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brats_seg.bench.monai_train import monai_preprocessed_loader, monai_tutorial_loader
from brats_seg.preprocess.case import PreprocessConfig
from brats_seg.preprocess.stage import run_preprocess
from brats_seg.seg3d.config import load_config
from brats_seg.seg3d.data import open_dataset
from tests.preprocess_fixtures import ingest_to
from tests.train_fixtures import TINY

OVERRIDES = [*TINY, "data.fold=-1", "data.patch_size=[8,8,8]"]


@pytest.fixture(scope="module")
def two_mm(tmp_path_factory) -> Path:
    """Three 1 mm raw cases (LPS, labels 0/1/2/4) preprocessed at 2 mm."""
    from tests.conftest import make_case

    root = tmp_path_factory.mktemp("bench_train")
    for i in range(3):
        make_case(root / "data", f"Case_{i}", shape=(24, 20, 16), seed=i)
    ingest_to([root / "data"], root / "raw.json")
    run_preprocess(root / "raw.json", root / "pp", PreprocessConfig(spacing=(2.0, 2.0, 2.0)), workers=1)
    return root / "pp" / "preprocessed.json"


@pytest.mark.parametrize("make_loader", [monai_preprocessed_loader, monai_tutorial_loader])
def test_references_yield_our_patch_shapes_and_canonical_labels(two_mm, make_loader):
    cfg = load_config(None, OVERRIDES)
    data = open_dataset(two_mm, cfg)
    seen = set()
    for _, batch in zip(range(4), make_loader(data, cfg)):
        assert tuple(batch["image"].shape) == (2, 4, 8, 8, 8) and batch["image"].dtype == torch.float32
        assert tuple(batch["label"].shape) == (2, 1, 8, 8, 8)
        seen |= set(np.unique(batch["label"].numpy()).tolist())
    assert seen <= {0, 1, 2, 3} and seen & {1, 2, 3}, seen  # 4 became 3; foreground patches occur


def test_tutorial_reference_resamples_like_the_run(two_mm):
    """The raw 24x20x16 mm volume at the run's 2 mm: the tutorial chain's image is the crop at 2 mm."""
    from monai import transforms as T

    cfg = load_config(None, OVERRIDES)
    data = open_dataset(two_mm, cfg)
    loader = monai_tutorial_loader(data, cfg)
    chain = loader.dataset.transform
    head = T.Compose(chain.transforms[:6])  # load .. normalise, before padding and cropping
    item = head(loader.dataset.data[0])
    stored = np.load(data.root / data.train[0]["image"], mmap_mode="r")
    assert item["image"].shape[1:] == stored.shape[:3], (item["image"].shape, stored.shape)


def test_one_step_bench_reports_both_references(two_mm):
    from brats_seg.bench.train_step import bench_train

    result = bench_train(two_mm, None, OVERRIDES, steps=1, rounds=1)
    for key in ("train_step_s", "monai_step_s", "monai_tutorial_step_s"):
        assert result[key] > 0, key
    assert result["speedup_vs_monai"] > 0 and result["speedup_vs_monai_tutorial"] > 0
    assert result["reference_fwd_bwd_s"] > 0 and result["layout_speedup"] > 0
    from brats_seg.bench.train import format_table

    assert "default layout" in format_table(result)


def test_paused_loader_workers_stop_and_resume():
    """A contender's loader workers are stopped while the others are timed, then resumed."""
    import signal

    from brats_seg.bench.train_step import _signal_workers

    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True)
    next(iter(loader))
    (worker,) = loader._iterator._workers

    def stopped(want: bool) -> bool:  # signals arrive asynchronously: poll for up to 5 s
        import time

        for _ in range(100):
            state = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if (state in ("T", "t")) == want:
                return True
            time.sleep(0.05)
        return False

    try:
        _signal_workers(loader, signal.SIGSTOP)
        assert stopped(True)
        _signal_workers(loader, signal.SIGCONT)
        assert stopped(False)
        assert len(list(loader)) == 4  # still works after the pause
    finally:
        _signal_workers(loader, signal.SIGCONT)
    _signal_workers(torch.utils.data.DataLoader([1, 2]), signal.SIGSTOP)  # no workers: nothing to do


LOADER = ["--loader", "only", "--loader-samples", "8", "--loader-override", "data.patch_size=[32,32,32]",
          "--loader-override", "augment.rotate_prob=0.5", "--loader-override", "augment.scale_prob=0.5"]


def test_loader_part_times_the_gpu_recipe_against_the_previous_reader(tmp_path, run_cli):
    """`bench train --loader only`: one phantom case preprocessed at 1 mm, the GPU recipe's
    augmentation (32^3 patches), our reader and the previous one on the same keys."""
    import json

    from tests.conftest import make_case

    case = make_case(tmp_path / "data", "Case_0", shape=(24, 20, 16), seed=1)
    out = tmp_path / "bench" / "train.json"
    code, stdout, stderr = run_cli("bench", "train", *LOADER, "--loader-case", case, "--out", out)
    assert code == 0, stderr
    loader = json.loads(out.read_text())["loader"]
    assert loader["patch_size"] == [32, 32, 32] and loader["samples"] == 8 and loader["spacing"] == [1.0, 1.0, 1.0]
    ours, ref = loader["patches"], loader["reference"]
    assert ours["samples_per_cpu_s"] > 0 and ref["samples_per_cpu_s"] > 0 and loader["speedup"] > 0
    assert 0 < ours["warped_fraction"] == ref["warped_fraction"]  # same keys, same draws
    assert ours["max_region_mb"] <= ref["max_region_mb"]
    assert loader["max_image_difference"] < 1e-3 and loader["label_disagreement"] < 0.01
    assert "previous reader" in stdout and "samples / CPU s" in out.with_suffix(".md").read_text()


def test_loader_part_refuses_bad_options(tmp_path, run_cli):
    out = tmp_path / "train.json"
    code, _, stderr = run_cli("bench", "train", *LOADER, "--loader-samples", "0", "--out", out)
    assert code == 2 and stderr.strip().startswith("error: --loader-samples: got 0")
    code, _, stderr = run_cli("bench", "train", *LOADER, "--loader-case", tmp_path / "nope", "--out", out)
    assert code == 2 and "nope: is not a case folder" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("bench", "train", *LOADER, "--loader-spacing", "0", "--out", out)
    assert code == 2 and stderr.strip().startswith("error: --loader-spacing:")
    assert not out.exists()
