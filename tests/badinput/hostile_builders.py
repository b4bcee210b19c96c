"""Builders for the hostile-input regression suite (tests/badinput/test_hostile_*.py).

Everything goes through the CLI (`brats_seg.cli.main` in-process, or `python -m brats_seg` in a
subprocess when a run may hang or eat memory), so these tests do not depend on where the package's
internals live. The only package-adjacent helper used is tests/run_fixtures.make_tiny_run (a tiny
random 3D run folder).

The small valid workspace (built once per test module, copied per test):

    src/Synth_000{0,1,2}/   three synthetic phantoms (32x32x24, BraTS 2018 layout), from `brats-seg synth`
    raw.json                `brats-seg ingest src` (roots are relative: a copy stays valid)
    pre/                    `brats-seg preprocess raw.json --out pre` (native spacing)
    run/                    a tiny random 3D model (checkpoints/best.pt)
    pred/                   `brats-seg predict --model run --manifest raw.json --out pred`
    eval/                   `brats-seg evaluate --pred pred --truth raw.json --out eval`
    train.yaml              a one-step training config (tests.badinput.builders.TRAIN_KEYS)
    outside/                an empty folder outside every root
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.badinput.builders import changes, snapshot, train_yaml  # plain helpers, no package imports

REPO = Path(__file__).resolve().parents[2]
CASES = ("Synth_0000", "Synth_0001", "Synth_0002")
SHAPE = (32, 32, 24)
CHANNELS = ("t1", "t1ce", "t2", "flair")
# the small cases written by the NIfTI tests themselves (tests/conftest.py's phantoms)
SMALL = (24, 20, 16)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SMALL[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


# ---------------------------------------------------------------------------------------------- CLI

def cli(*argv) -> tuple[int, str, str]:
    """`brats_seg.cli.main(argv)` in-process with stdout/stderr captured (for building, not asserting)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        from brats_seg.cli import main

        code = main([str(a) for a in argv])
    return int(code or 0), out.getvalue(), err.getvalue()


def must(*argv) -> str:
    code, out, err = cli(*argv)
    assert code == 0, f"building the workspace: `brats-seg {' '.join(map(str, argv))}` exited {code}: {err[-3000:]}"
    return out


def run_bounded(argv, cwd: Path, timeout: float = 90.0, max_rss_mb: float = 1500.0) -> dict:
    """`python -m brats_seg ARGV` in its own process group, killed when it runs past `timeout` seconds or
    its resident memory passes `max_rss_mb`. Returns code, stdout, stderr, killed (None or why), peak_mb."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "brats_seg", *[str(a) for a in argv]], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    import threading

    chunks = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda s=s, k=k: chunks[k].append(s.read()), daemon=True)
               for s, k in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for r in readers:
        r.start()
    killed, peak, start = None, 0.0, time.monotonic()
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        if peak > max_rss_mb:
            killed = f"resident memory passed {max_rss_mb:.0f} MB"
        elif time.monotonic() - start > timeout:
            killed = f"still running after {timeout:.0f} s"
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.05)
    for r in readers:
        r.join(10)
    return {"code": proc.returncode, "out": "".join(chunks["out"]), "err": "".join(chunks["err"]),
            "killed": killed, "peak_mb": peak}


# ---------------------------------------------------------------------------------------------- assertions

def call(run_cli, *argv) -> tuple[int, str, str]:
    """run_cli, but an uncaught exception is reported as the traceback a user would see."""
    import pytest

    try:
        return run_cli(*argv)
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 2), "", str(exc.code or "")
    except BaseException as exc:  # noqa: BLE001 - RecursionError, MemoryError, ... are the bug
        pytest.fail(f"uncaught {type(exc).__name__} (a traceback, not one error line): {exc}"[:1500])


def one_error_line(code: int, err: str, *names: str, exit_code: int = 2) -> str:
    """exit code 2 (default), exactly one non-empty stderr line, starting 'error: ', naming each of `names`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert code == exit_code, f"expected exit code {exit_code}, got {code}; stderr: {err[-2000:]!r}"
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert str(name) in lines[0], f"the error line does not name {name!r}: {lines[0]!r}"
    return lines[0]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def refused_or_rejected(code: int, err: str, out_manifest: Path | None, case: str, *names: str) -> None:
    """A whole-command refusal (exit 2, one line naming one of `names`) or, in a batch stage, the case
    rejected (exit 1, one error line naming the case, listed under `rejected` of `out_manifest`)."""
    assert "Traceback" not in err, err[-3000:]
    assert code in (1, 2), f"expected exit 2 (refused) or 1 (case rejected), got {code}; stderr: {err[-2000:]!r}"
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one error line, got {err.splitlines()!r}"
    if code == 2:
        assert len([x for x in err.splitlines() if x.strip()]) == 1, err
        assert any(str(n) in lines[0] for n in (*names, case)), f"the error line names none of {names}: {lines[0]!r}"
    else:
        assert case in lines[0], lines[0]
        assert out_manifest is not None and out_manifest.is_file(), "a batch with a rejected case writes its manifest"
        manifest = json.loads(out_manifest.read_text())
        assert [r["id"] for r in manifest.get("rejected", [])] == [case], manifest.get("rejected")


def untouched(before: dict, root: Path, *scratch: Path) -> None:
    """Nothing under root changed since `before` (a snapshot), except under the `scratch` paths."""
    prefixes = [s.relative_to(root).as_posix() for s in scratch]

    def keep(snap):
        return {k: v for k, v in snap.items() if not any(k == p or k.startswith(p + "/") for p in prefixes)}

    assert changes(keep(before), keep(snapshot(root))) == []


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hashes(*paths: Path) -> dict[str, str]:
    """rel-less {path: sha256} of every file under the given files/folders."""
    found = {}
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        for f in files:
            found[str(f)] = sha256(f)
    return found


# ---------------------------------------------------------------------------------------------- workspace

def build_workspace(root: Path, train: bool = False) -> Path:
    """The workspace of the module docstring (and train/, a one-step run on pre/, when `train`)."""
    from tests.run_fixtures import make_tiny_run

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    must("synth", "--out", root / "src", "--cases", len(CASES), "--seed", 0, "--shape", ",".join(map(str, SHAPE)))
    must("ingest", root / "src", "--out", root / "raw.json", "--workers", 1)
    must("preprocess", root / "raw.json", "--out", root / "pre", "--workers", 1)
    make_tiny_run(root / "run")
    must("predict", "--model", root / "run", "--manifest", root / "raw.json", "--out", root / "pred", "--threads", 1)
    must("evaluate", "--pred", root / "pred", "--truth", root / "raw.json", "--out", root / "eval")
    (root / "train.yaml").write_text(train_yaml())
    (root / "outside").mkdir()
    if train:
        build_train(root)
    return root


def build_train(root: Path) -> Path:
    must("train", "--config", root / "train.yaml", "--data", root / "pre" / "preprocessed.json", "--out", root / "train")
    return root / "train"


def copy_workspace(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest


def case_file(ws: Path, case: str, channel: str) -> Path:
    return ws / "src" / case / f"{case}_{channel}.nii.gz"


def edit_json(path: Path, fn) -> Path:
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(json.dumps(data, indent=2))
    return Path(path)


def best(ws: Path) -> Path:
    return ws / "run" / "checkpoints" / "best.pt"


# ---------------------------------------------------------------------------------------------- NIfTI writers

def save_nifti(path: Path, data: np.ndarray, affine=None, slope: float | None = None, inter: float | None = None) -> Path:
    """NIfTI-1 with qform = sform = affine; `slope`/`inter` are written into the header's scl_slope and
    scl_inter fields as given (the stored voxels are `data` unchanged, so the true values are
    data * slope + inter as the NIfTI standard defines them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = AFFINE if affine is None else np.asarray(affine, float)
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    if slope is None and inter is None:
        nib.save(img, str(path))
        return path
    plain = path.with_name(path.name.removesuffix(".gz") + ".tmp.nii") if path.name.endswith(".gz") else path
    nib.save(img, str(plain))
    raw = bytearray(plain.read_bytes())
    raw[112:116] = np.array([1.0 if slope is None else slope], "<f4").tobytes()  # scl_slope
    raw[116:120] = np.array([0.0 if inter is None else inter], "<f4").tobytes()  # scl_inter
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(bytes(raw)))
        plain.unlink()
    else:
        path.write_bytes(bytes(raw))
    return path


def phantom(shape=SMALL, seed: int = 0, channel: int = 0) -> np.ndarray:
    """A brain-like block, zero outside, float32 (as tests/conftest.phantom)."""
    rng = np.random.default_rng(seed * 7 + channel)
    img = np.zeros(shape, np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    img[inner] = rng.uniform(50.0, 150.0, img[inner].shape).astype(np.float32) * (1 + 0.2 * channel)
    return img


def labels(shape=SMALL, values=(1, 2, 4)) -> np.ndarray:
    """Nested blobs of the given non-zero values (outer first), uint8."""
    seg = np.zeros(shape, np.uint8)
    centre = [s // 2 for s in shape]
    for i, v in enumerate(values):
        r = max(1, 6 - 2 * i)
        seg[tuple(slice(max(0, c - r), c + r) for c in centre)] = v
    return seg


def write_case(folder: Path, case: str, images: dict | None = None, seg: np.ndarray | None | bool = True,
               affine=None, seg_slope=None, seg_inter=None, seg_name: str = "seg", **scaling) -> Path:
    """folder/case/<case>_{t1,t1ce,t2,flair,seg}.nii.gz from phantoms; `images` replaces channels' data;
    `scaling` as t1=(slope, inter) writes that channel's header scaling."""
    case_dir = Path(folder) / case
    images = images or {}
    for i, channel in enumerate(CHANNELS):
        data = images.get(channel, phantom(seed=0, channel=i))
        slope, inter = scaling.get(channel, (None, None))
        save_nifti(case_dir / f"{case}_{channel}.nii.gz", data, affine, slope, inter)
    if seg is not False and seg is not None:
        data = labels() if seg is True else seg
        save_nifti(case_dir / f"{case}_{seg_name}.nii.gz", data, affine, seg_slope, seg_inter)
    return case_dir


def gzip_bomb(path: Path, inflated_mb: int = 455) -> Path:
    """A valid small NIfTI (header declares SMALL float32) followed by `inflated_mb` MB of zeros, gzipped."""
    tmp = path.with_name("bomb_src.nii")
    save_nifti(tmp, phantom())
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(8 << 20)
    with open(path, "wb") as f:
        f.write(co.compress(tmp.read_bytes()))
        for _ in range(inflated_mb // 8):
            f.write(co.compress(chunk))
        f.write(co.flush())
    tmp.unlink()
    return path


# ---------------------------------------------------------------------------------------------- MSD and nnU-Net sources

MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def write_msd(root: Path, n_cases: int = 1, meta_edit=None) -> Path:
    """A tiny MSD Task01 folder: imagesTr/BRATS_00i.nii.gz (4D, FLAIR/T1/T1ce/T2), labelsTr/, dataset.json."""
    root = Path(root)
    training = []
    for i in range(n_cases):
        name = f"BRATS_{i + 1:03d}.nii.gz"
        stack = np.stack([phantom(seed=i, channel=c) for c in range(4)], axis=-1)
        save_nifti(root / "imagesTr" / name, stack)
        save_nifti(root / "labelsTr" / name, labels(values=(1, 2, 3)))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    meta = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "labels": dict(MSD_LABELS),
            "numTraining": n_cases, "numTest": 0, "training": training, "test": []}
    if meta_edit is not None:
        meta_edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta) if not isinstance(meta, str) else meta)
    return root


def write_nnunet(root: Path, n_cases: int = 1, meta_edit=None) -> Path:
    """A tiny nnU-Net raw folder: imagesTr/<case>_000{0..3}.nii.gz, labelsTr/<case>.nii.gz, dataset.json."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case = f"BraTS_{i:03d}"
        for c in range(4):
            save_nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", phantom(seed=i, channel=c))
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", labels(values=(1, 2, 3)))
    meta = {"channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"},
            "labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
            "numTraining": n_cases, "file_ending": ".nii.gz"}
    if meta_edit is not None:
        meta_edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
