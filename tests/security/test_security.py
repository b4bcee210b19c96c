"""Security: user-supplied files never run code.

- A malicious pickle (a class whose __reduce__ creates a marker file) as a checkpoint, in every place
  a checkpoint is read: `predict --model RUN` (its checkpoints/best.pt), `predict --model FILE` (torch
  zip and plain pickle), `train --resume` (latest.pt and previous.pt), `doctor --run` (folder and
  file), `predict2d --model`. Each is refused and the marker never appears. A control test proves
  the payload is live: an unsafe torch.load(weights_only=False) in a subprocess does create it.
- A preprocessed array holding a pickled object is never unpickled by training.
- YAML with python tags (configs, overrides, pipeline files) is refused, nothing runs.
- The package source (brats_seg/**/*.py, parsed with ast so comments and docstrings do not count)
  has no eval/exec/compile, no pickle/marshal/dill loading, no yaml.load without a safe loader, no
  torch.load without weights_only=True, no np.load with allow_pickle=True, no os.system or
  shell=True.

Manifest path containment (absolute paths, `..`, symlinks out of the root, case ids that are paths)
is in the bad-input suite: tests/badinput/builders.py (raw_path_with_dotdot, raw_absolute_path,
raw_symlink_out_of_root, raw_case_id_with_path, pre_path_with_dotdot, pre_absolute_path,
pre_symlink_out_of_root, and the per-case batch variants case_path_with_dotdot, case_absolute_path,
case_symlink_out_of_root, each pointing at a valid file so that only containment refuses it) and
tests/unit/test_ingest_errors.py::test_symlink_out_of_the_dataset_root_is_followed_recorded_and_held_to_its_target
(a link in the source is followed at ingest and recorded; moved afterwards, it is refused).
"""
from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_case
from tests.train_fixtures import make_dataset

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "brats_seg"


class Payload:
    """Unpickling this calls os.system('touch MARKER')."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _torch_checkpoint(path: Path, marker: Path) -> Path:
    """A torch zip file that looks like a brats-seg checkpoint, with the payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "brats-seg-checkpoint", "version": 1, "model": {"w": Payload(marker)},
                "meta": {"model": "attention_unet3d"}, "progress": Payload(marker)}, path)
    return path


def _plain_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("sec_case"), "c1", seg=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sec_data"), n_cases=2, shape=(16, 16, 16), radius=4.0)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_the_payload_is_live(tmp_path, marker):
    """Control: loading the same file unsafely does run the code (so the refusals below mean something)."""
    path = _torch_checkpoint(tmp_path / "evil.pt", marker)
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("where", ["run_best", "run_latest_only", "file_torch", "file_plain_pickle"])
def test_predict_refuses_a_malicious_checkpoint(tmp_path, run_cli, case_dir, marker, where):
    run = tmp_path / "run"
    if where == "run_best":
        model = run
        evil = _torch_checkpoint(run / "checkpoints" / "best.pt", marker)
    elif where == "run_latest_only":
        model = run
        evil = _torch_checkpoint(run / "checkpoints" / "latest.pt", marker)
    elif where == "file_torch":
        model = evil = _torch_checkpoint(tmp_path / "model.pt", marker)
    else:
        model = evil = _plain_pickle(tmp_path / "model.pt", marker)
    code, _, err = run_cli("predict", "--model", model, "--case", case_dir, "--out", tmp_path / "mask.nii.gz",
                           "--threads", "1")
    assert code == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and str(evil) in lines[0], err
    assert not marker.exists(), "the checkpoint's pickle code ran"
    assert not (tmp_path / "mask.nii.gz").exists()


@pytest.mark.parametrize("which", ["latest", "latest_and_previous"])
def test_train_resume_refuses_a_malicious_checkpoint(tmp_path, run_cli, data, marker, which):
    run = tmp_path / "run"
    _torch_checkpoint(run / "checkpoints" / "latest.pt", marker)
    if which == "latest_and_previous":
        _plain_pickle(run / "checkpoints" / "previous.pt", marker)
    config = tmp_path / "train.yaml"
    config.write_text("task: 3d\n")
    code, _, err = run_cli("train", "--config", config, "--data", data, "--out", run, "--resume",
                           "model.features=[4,8]", "data.patch_size=[16,16,16]", "data.num_workers=0",
                           "train.num_threads=1", "data.folds=2")
    assert code == 2, err
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and "no readable checkpoint" in lines[0], err
    assert f"{run / 'checkpoints' / 'latest.pt'}: cannot be read" in err  # the warning names the file
    assert not marker.exists()


@pytest.mark.parametrize("target", ["folder", "file"])
def test_doctor_reports_a_malicious_checkpoint_without_loading_it(tmp_path, run_cli, marker, target):
    evil = _torch_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", marker)
    code, out, err = run_cli("doctor", "--run", tmp_path / "run" if target == "folder" else evil)
    assert code == 1, out + err
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert any(str(evil) in p and "weights_only=True" in p for p in problems), out
    assert not marker.exists()


def test_predict2d_refuses_a_malicious_checkpoint(tmp_path, run_cli, marker):
    from PIL import Image

    evil = _torch_checkpoint(tmp_path / "run2d" / "checkpoints" / "best.pt", marker)
    Image.new("RGB", (32, 32), (120, 60, 30)).save(tmp_path / "img.png")
    code, _, err = run_cli("predict2d", "--model", evil, "--images", tmp_path / "img.png", "--out", tmp_path / "o")
    assert code == 2, err
    assert len(_error_lines(err)) == 1
    assert not marker.exists()


def test_training_never_unpickles_a_preprocessed_array(tmp_path, data, marker):
    """image.npy replaced by a pickled object array: training must not run its code (it may fail)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data.parent, root)
    for image in root.glob("cases/*/image.npy"):
        np.save(image, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    config = tmp_path / "train.yaml"
    config.write_text("task: 3d\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "brats_seg", "train", "--config", str(config), "--data",
                           str(root / "preprocessed.json"), "--out", str(tmp_path / "run"), "model.features=[4,8]",
                           "data.patch_size=[16,16,16]", "data.num_workers=0", "train.num_threads=1", "data.folds=2",
                           "data.fold=-1", "train.max_steps=1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert not marker.exists(), "a pickled object in a preprocessed array ran"


# ---------------------------------------------------------------------------------------------- YAML

def _tag(marker: Path) -> str:
    return f"!!python/object/apply:os.system [\"touch '{marker}'\"]"


@pytest.mark.parametrize("tag", ["apply", "name", "new"])
def test_train_config_with_python_tags_is_refused(tmp_path, run_cli, data, marker, tag):
    text = {"apply": f"task: 3d\nseed: {_tag(marker)}\n",
            "name": "task: 3d\nseed: !!python/name:os.system\n",
            "new": f"task: 3d\nmodel: !!python/object/new:os.system [\"touch '{marker}'\"]\n"}[tag]
    config = tmp_path / "evil.yaml"
    config.write_text(text)
    code, _, err = run_cli("train", "--config", config, "--data", data, "--out", tmp_path / "run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {config}: "), err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_override_with_a_python_tag_is_refused(tmp_path, run_cli, data, marker):
    config = tmp_path / "train.yaml"
    config.write_text("task: 3d\n")
    code, _, err = run_cli("train", "--config", config, "--data", data, "--out", tmp_path / "run",
                           f"seed={_tag(marker)}")
    assert code == 2 and len(_error_lines(err)) == 1 and "seed" in err, err
    assert not marker.exists()


def test_pipeline_file_with_python_tags_is_refused(tmp_path, run_cli, marker):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"workdir: {tmp_path / 'work'}\nstages:\n  - {_tag(marker)}\n")
    code, _, err = run_cli("run", path)
    assert code == 2 and len(_error_lines(err)) == 1 and str(path) in err, err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- source scan

# Where the package may use something the scan flags, and why.
ALLOWED = {
    ("brats_seg/seg2d/int8.py", "torch.jit.load"):
        "load_torchscript reads back the TorchScript file `quantize --torchscript` wrote; no CLI command "
        "calls it (checked below) and TorchScript runs no Python",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


UNSAFE_LOADERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads", "marshal.load",
                  "marshal.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads",
                  "joblib.load", "shelve.open", "pandas.read_pickle", "pd.read_pickle", "yaml.unsafe_load",
                  "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all", "torch.jit.load", "os.system",
                  "os.popen", "jsonpickle.decode"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader", "BaseLoader",
                     "yaml.BaseLoader"}


def scan(source: str, filename: str = "<source>") -> list[str]:
    """Unsafe calls in Python source: 'file:line: what'. Only code counts (comments and strings don't)."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "marshal", "dill", "cloudpickle"):
            bad = [a.name for a in node.names if a.name in ("load", "loads", "Unpickler")]
            if bad:
                found.append(f"{filename}:{node.lineno}: from {node.module} import {', '.join(bad)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{filename}:{node.lineno}"
        if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where}: {name}()")
        elif name in UNSAFE_LOADERS:
            found.append(f"{where}: {name}()")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader) not in SAFE_YAML_LOADERS:
                found.append(f"{where}: {name}() without a safe Loader")
        elif name == "torch.load" or name.endswith(".torch.load"):
            if not _is_const(_kw(node, "weights_only"), True):
                found.append(f"{where}: torch.load() without weights_only=True")
        elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") is not None \
                and not _is_const(_kw(node, "allow_pickle"), False):
            found.append(f"{where}: {name}(allow_pickle=...)")
        elif name.startswith("subprocess.") and _kw(node, "shell") is not None \
                and not _is_const(_kw(node, "shell"), False):
            found.append(f"{where}: {name}(shell=...)")
    return found


def test_the_scanner_finds_what_it_should_and_ignores_comments_and_docstrings():
    bad = '''
import pickle, yaml, torch, numpy as np, subprocess, os
from pickle import loads
x = eval("1")
exec("y = 2")
pickle.load(open("f", "rb"))
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
torch.load("f")
torch.load("f", weights_only=False)
np.load("f", allow_pickle=True)
subprocess.run("ls", shell=True)
os.system("ls")
'''
    found = scan(bad)
    assert len(found) == 11, found
    good = '''
"""eval(x) exec(y) pickle.load(f) yaml.load(t) torch.load(p) in a docstring"""
import yaml, torch, numpy as np, subprocess
# eval(x); torch.load(p); pickle.loads(b)
model.eval()
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
torch.load(p, map_location="cpu", weights_only=True)
np.load(p, mmap_mode="r")
np.load(p, allow_pickle=False)
re.compile("x")
subprocess.run(["ls"], check=True)
s = "exec(evil)"
'''
    assert scan(good) == []


def test_package_source_has_no_unsafe_loading_or_code_execution():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    found = []
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        for item in scan(path.read_text(), rel):
            what = item.split(": ", 1)[1].removesuffix("()")
            if (rel, what) not in ALLOWED:
                found.append(item)
    assert found == [], "unsafe calls in the package:\n" + "\n".join(found)


def test_the_allowed_torchscript_loader_is_not_reachable_from_the_cli():
    users = [p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")
             if "load_torchscript" in p.read_text() and p.name != "int8.py"]
    assert users == []
