"""pipelines/ keeps trainer configs, run files, cluster launchers and studies (with their result files)
apart, and every file one of them names exists: a moved config breaks a test here, not a user's job hours into a queue."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from brats_seg.pipeline.runner import load_pipeline

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"
KINDS = {"train": ("*.yaml",), "runs": ("*.yaml",), "cluster": ("*.sbatch", "*.sh"),
         "studies": ("*.md", "results/*.json")}  # results/: the bench learn parts a study is merged from
PIPELINE_PATH = re.compile(r"pipelines/[\w./-]+\.(?:yaml|sbatch|sh)")


def test_every_file_sits_in_the_folder_of_its_kind():
    expected = {p for kind, globs in KINDS.items() for g in globs for p in (PIPELINES / kind).glob(g)}
    found = {p for p in PIPELINES.rglob("*") if p.is_file()}
    assert found == expected, f"not in train/, runs/, cluster/ or studies/: {sorted(map(str, found - expected))}"


@pytest.mark.parametrize("path", sorted((PIPELINES / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_trainer_configs_name_their_task(path: Path):
    assert yaml.safe_load(path.read_text())["task"] in ("2d", "3d")


@pytest.mark.parametrize("path", sorted((PIPELINES / "runs").glob("*.yaml")), ids=lambda p: p.name)
def test_run_files_name_trainer_configs_that_exist(path: Path):
    spec = load_pipeline(path, {"data": "DATA"})
    configs = [path.parent / s["config"] for s in spec["stages"] if "config" in s]
    assert configs and all(c.resolve().parent == PIPELINES / "train" and c.is_file() for c in configs), configs


def test_every_pipelines_path_named_in_the_repository_exists():
    texts = [REPO / "README.md", REPO / "Dockerfile", *PIPELINES.rglob("*.*"), *(REPO / "brats_seg").rglob("*.py")]
    named = {(m, t.relative_to(REPO)) for t in texts for m in PIPELINE_PATH.findall(t.read_text())}
    missing = sorted(f"{where}: {m}" for m, where in named if "*" not in m and not (REPO / m).is_file())
    assert not missing, "\n".join(missing)
