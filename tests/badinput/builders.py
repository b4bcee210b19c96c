"""Builders of broken inputs for tests/badinput: one small valid workspace, and functions that each
break one thing in a copy of it and say which command to run and what its error line must name.

The workspace (built once per module, copied per test so a package bug cannot leak between tests):

    src/Synth_000{0,1,2}/   three synthetic phantoms (32x32x24, BraTS 2018 layout)
    raw.json                the raw manifest of src/ (roots are relative: the copy stays valid)
    pre/                    `brats-seg preprocess raw.json --out pre` (native spacing)
    run/                    a tiny model (checkpoints/best.pt) as training writes it
    pred/                   `brats-seg predict --model run --manifest raw.json --out pred`
    train/                  a one-step training run on pre/ (run.json, config.yaml, checkpoints/)
    train.yaml              the config that trained train/
    outside/                files outside every root (targets of `..`, absolute paths and symlinks)

Plain functions, no fixtures (tests/faults and tests/ops reuse make_model_run).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

CASES = ("Synth_0000", "Synth_0001", "Synth_0002")
SHAPE = (32, 32, 24)
CHANNELS = ("t1", "t1ce", "t2", "flair")
# a tiny 3D model and one training step (as tests/train_fixtures.TINY, for 32x32x24 phantoms)
TRAIN_KEYS = ["model.features=[4,8]", "model.deep_supervision=false", "data.patch_size=[16,16,16]",
              "data.batch_size=1", "data.num_workers=0", "data.folds=3", "data.fold=-1", "train.max_steps=1",
              "train.num_threads=1", "train.progress=false", "train.log_every_steps=1", "augment.enabled=false",
              "optim.name=adamw", "schedule.name=constant"]


# ---------------------------------------------------------------------------------------------- workspace

def build_workspace(root: Path) -> Path:
    """Write the valid workspace described in the module docstring under `root`; returns root."""
    import torch

    from brats_seg.infer.batch import predict_manifest
    from brats_seg.infer.segmenter import Segmenter
    from brats_seg.ingest.stage import ingest
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess
    from brats_seg.synth.phantoms import synthesize_dataset
    from brats_seg.seg3d.config import load_config
    from brats_seg.seg3d.trainer import train_3d

    root = Path(root)
    torch.set_num_threads(1)
    synthesize_dataset(root / "src", len(CASES), 0, SHAPE)
    ingest([root / "src"], root / "raw.json")
    run_preprocess(root / "raw.json", root / "pre", PreprocessConfig(), workers=1)
    make_model_run(root / "run")
    predict_manifest(Segmenter.from_run(root / "run", threads=1), root / "raw.json", root / "pred")
    (root / "train.yaml").write_text(train_yaml())
    assert train_3d(load_config(root / "train.yaml"), root / "pre" / "preprocessed.json", root / "train", False) == 0
    (root / "outside").mkdir()
    return root


def train_yaml() -> str:
    """TRAIN_KEYS as a 3D config file (one section per dotted prefix)."""
    sections: dict[str, list[str]] = {}
    for item in TRAIN_KEYS:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"  {name}: {value}")
    return "task: 3d\nseed: 0\n" + "".join(f"{s}:\n" + "\n".join(lines) + "\n" for s, lines in sections.items())


def make_model_run(run_dir: Path, seed: int = 0) -> Path:
    """RUN/checkpoints/best.pt for a tiny random Attention U-Net."""
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(run_dir, seed)


def copy_workspace(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------------------------------------- snapshots

def snapshot(root: Path) -> dict[str, tuple]:
    """rel path -> (kind, content, mtime_ns) of every file, symlink and folder under root (hidden ones too)."""
    found: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif path.is_dir():
                found[rel] = ("dir", None, None)
            else:
                found[rel] = ("file", path.read_bytes(), st.st_mtime_ns)
    return found


def changes(before: dict, after: dict) -> list[str]:
    """Human-readable differences between two snapshots (empty: nothing touched)."""
    out = []
    for rel in sorted(set(before) | set(after)):
        a, b = before.get(rel), after.get(rel)
        if a is None:
            out.append(f"added {rel}")
        elif b is None:
            out.append(f"removed {rel}")
        elif a[:2] != b[:2]:
            out.append(f"content changed {rel}")
        elif a[2] != b[2]:
            out.append(f"mtime changed {rel}")
    return out


# ---------------------------------------------------------------------------------------------- editing helpers

def edit_json(path: Path, fn: Callable[[dict], None]) -> Path:
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(json.dumps(data, indent=2))
    return Path(path)


def case_file(ws: Path, case: str, channel: str) -> Path:
    return ws / "src" / case / f"{case}_{channel}.nii.gz"


def rewrite_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    img = nib.load(str(path))
    out = nib.Nifti1Image(np.asarray(data), img.affine if affine is None else affine)
    out.set_sform(out.affine, code=1)
    out.set_qform(out.affine, code=1)
    nib.save(out, str(path))
    return path


def read_nifti(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj).copy()


def move_outside(ws: Path, path: Path) -> Path:
    """Move `path` to ws/outside/ (same name) and return its new location."""
    target = ws / "outside" / path.name
    shutil.move(str(path), target)
    return target


# ---------------------------------------------------------------------------------------------- broken inputs

@dataclass
class Bad:
    """A broken input: the CLI argv to run and what its one error line must contain."""

    argv: list
    names: list[str]  # each must appear in the error line (the offending file or case)
    says: list[str] = field(default_factory=list)  # words of the message (what is wrong)
    output: Path | None = None  # a fresh output path the failing command must not create
    scratch: Path | None = None  # a fresh output path it may create (left out of the comparison)


def _raw(ws: Path) -> Path:
    return ws / "raw.json"


def _pre(ws: Path) -> Path:
    return ws / "pre" / "preprocessed.json"


def _preprocess(ws: Path, raw: Path, *extra) -> list:
    return ["preprocess", raw, "--out", ws / "pre", "--workers", "1", *extra]


def _predict_manifest(ws: Path, raw: Path, *extra) -> list:
    return ["predict", "--model", ws / "run", "--manifest", raw, "--out", ws / "pred", "--threads", "1", *extra]


def _predict_case(ws: Path, *source) -> list:
    return ["predict", "--model", ws / "run", *source, "--out", ws / "new_mask.nii.gz", "--threads", "1"]


def _train(ws: Path, *, config: Path | None = None, data: Path | None = None, extra=()) -> list:
    """Resume the existing run train/: a failing call must leave that run exactly as it was."""
    return ["train", "--config", config or ws / "train.yaml", "--data", data or _pre(ws), "--out", ws / "train",
            "--resume", *extra]


def _evaluate(ws: Path, truth: Path | None = None, pred: Path | None = None) -> list:
    return ["evaluate", "--pred", pred or ws / "pred", "--truth", truth or _raw(ws), "--out", ws / "new_eval"]


# --- manifests ---------------------------------------------------------------------------------

def raw_invalid_json(ws):
    _raw(ws).write_text('{"schema_version": 1, "stage": "raw", cases: [')
    return Bad(_preprocess(ws, _raw(ws)), [str(_raw(ws))], ["not valid JSON"])


def raw_empty_file(ws):
    _raw(ws).write_bytes(b"")
    return Bad(_predict_manifest(ws, _raw(ws)), [str(_raw(ws))], ["not valid JSON"])


def raw_not_utf8(ws):
    _raw(ws).write_bytes(b"\xff\xfe\x00\x01binary\x80\x81")
    return Bad(_preprocess(ws, _raw(ws)), [str(_raw(ws))])


def raw_deeply_nested_json(ws):
    """Valid JSON nested deeper than Python's recursion limit (a hostile or corrupted manifest)."""
    _raw(ws).write_text("[" * 100_000 + "]" * 100_000)
    return Bad(_preprocess(ws, _raw(ws)), [str(_raw(ws))])


def raw_not_an_object(ws):
    _raw(ws).write_text("[1, 2, 3]\n")
    return Bad(_predict_manifest(ws, _raw(ws)), [str(_raw(ws))], ["not a JSON object"])


def raw_case_missing_key(ws):
    edit_json(_raw(ws), lambda m: m["cases"][1].pop("images"))
    return Bad(_preprocess(ws, _raw(ws)), [str(_raw(ws))], ["images"])


def raw_missing_stage(ws):
    edit_json(_raw(ws), lambda m: m.pop("stage"))
    return Bad(["split", _raw(ws), "--out", ws / "new_split", "--test", "1"], [str(_raw(ws))], ["stage"],
               output=ws / "new_split")


def raw_wrong_schema_version(ws):
    edit_json(_raw(ws), lambda m: m.update(schema_version=99))
    return Bad(_preprocess(ws, _raw(ws)), [str(_raw(ws))], ["schema_version 99"])


def raw_is_preprocessed(ws):
    """A preprocessed manifest where a raw one is expected (wrong stage)."""
    return Bad(_predict_manifest(ws, _pre(ws)), [str(_pre(ws))], ["'preprocessed' manifest", "'raw'"])


def preprocessed_is_raw(ws):
    return Bad(_train(ws, data=_raw(ws)), [str(_raw(ws))], ["'raw' manifest", "'preprocessed'"])


def raw_duplicate_case_ids(ws):
    edit_json(_raw(ws), lambda m: m["cases"].append(copy.deepcopy(m["cases"][0])))
    return Bad(_preprocess(ws, _raw(ws)), [str(_raw(ws)), CASES[0]], ["duplicate case id"])


def raw_case_id_with_path(ws):
    """A case id that would become a path out of the output folder (cases/<id>/, masks/<id>.nii.gz)."""
    edit_json(_raw(ws), lambda m: m["cases"][0].update(id="../../escaped"))
    return Bad(_predict_manifest(ws, _raw(ws)), [str(_raw(ws))], ["../../escaped"])


def raw_manifest_missing(ws):
    missing = ws / "no_such_raw.json"
    return Bad(_evaluate(ws, truth=missing), [str(missing)], ["not found"], output=ws / "new_eval")


def raw_file_changed_since_written(ws):
    seg = case_file(ws, CASES[1], "seg")
    data = read_nifti(seg)
    data[0, 0, 0] = 2  # one voxel: same shape and geometry, other bytes
    rewrite_nifti(seg, data)
    return Bad(_evaluate(ws), [str(seg)], ["changed since the manifest was written"], output=ws / "new_eval")


def raw_path_with_dotdot(ws):
    """The path leaves the root through '..' to a perfectly valid file: refused for where it is."""
    shutil.copytree(ws / "src" / CASES[1], ws / "outside" / CASES[1])
    rel = f"../outside/{CASES[1]}/{CASES[1]}_seg.nii.gz"
    edit_json(_raw(ws), lambda m: m["cases"][1]["seg"].update(path=rel))
    return Bad(_evaluate(ws), [CASES[1], rel], ["'..'"], output=ws / "new_eval")


def raw_absolute_path(ws):
    target = ws / "outside" / f"{CASES[1]}_seg.nii.gz"
    shutil.copy2(case_file(ws, CASES[1], "seg"), target)
    edit_json(_raw(ws), lambda m: m["cases"][1]["seg"].update(path=str(target)))
    return Bad(_evaluate(ws), [CASES[1], str(target)], ["absolute"], output=ws / "new_eval")


def raw_symlink_out_of_root(ws):
    seg = case_file(ws, CASES[1], "seg")
    target = move_outside(ws, seg)
    seg.symlink_to(target)
    return Bad(_evaluate(ws), [CASES[1]], ["outside"], output=ws / "new_eval")


def pre_array_missing(ws):
    (ws / "pre" / "cases" / CASES[0] / "image.npy").unlink()
    return Bad(_train(ws), [str(_pre(ws)), CASES[0]], ["missing"])


def pre_path_with_dotdot(ws):
    edit_json(_pre(ws), lambda m: m["cases"][0].update(image="../outside/image.npy"))
    return Bad(_train(ws), [CASES[0], "../outside/image.npy"], ["'..'"])


def pre_absolute_path(ws):
    target = ws / "outside" / "image.npy"
    shutil.copy2(ws / "pre" / "cases" / CASES[0] / "image.npy", target)
    edit_json(_pre(ws), lambda m: m["cases"][0].update(image=str(target)))
    return Bad(_train(ws), [CASES[0], str(target)], ["absolute"])


def pre_symlink_out_of_root(ws):
    array = ws / "pre" / "cases" / CASES[2] / "seg.npy"
    array.symlink_to(move_outside(ws, array))
    return Bad(_train(ws), [CASES[2]], ["outside"])


def _fresh_train(ws: Path) -> tuple[list, Path]:
    """A new run (a resume of train/ would stop at once, its one step being done, and read no data)."""
    out = ws / "new_train"
    return ["train", "--config", ws / "train.yaml", "--data", _pre(ws), "--out", out], out


def pre_array_garbage(ws):
    """A preprocessed array overwritten by garbage (a disk error, a bad copy): refused, not a traceback."""
    for case in CASES:  # every case, so whichever the sampler draws first is broken
        (ws / "pre" / "cases" / case / "seg.npy").write_bytes(b"this is not an npy file\n" * 10)
    argv, out = _fresh_train(ws)
    return Bad(argv, ["seg.npy"], scratch=out)


def pre_array_truncated(ws):
    for case in CASES:
        path = ws / "pre" / "cases" / case / "image.npy"
        path.write_bytes(path.read_bytes()[:1000])
    argv, out = _fresh_train(ws)
    return Bad(argv, ["image.npy"], scratch=out)


# --- configs -------------------------------------------------------------------------------------

def config_unknown_key(ws):
    config = ws / "bad.yaml"
    config.write_text((ws / "train.yaml").read_text() + "optim_extra: 1\n")
    return Bad(_train(ws, config=config), ["optim_extra"], ["unknown key"])


def config_unknown_nested_key(ws):
    config = ws / "bad.yaml"
    config.write_text((ws / "train.yaml").read_text().replace("optim:\n", "optim:\n  lrr: 0.1\n"))
    return Bad(_train(ws, config=config), ["optim.lrr"], ["unknown key"])


def config_wrong_type(ws):
    config = ws / "bad.yaml"
    config.write_text((ws / "train.yaml").read_text().replace("data:\n", "data:\n  batch_size: two\n", 1)
                      .replace("  batch_size: 1\n", ""))
    return Bad(_train(ws, config=config), ["data.batch_size"])


def config_not_yaml(ws):
    """A binary file given as the config (a checkpoint, an image...)."""
    config = ws / "model.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" + bytes(range(256)))
    return Bad(_train(ws, config=config), [str(config)])


def config_broken_yaml(ws):
    config = ws / "bad.yaml"
    config.write_text("task: 3d\noptim:\n  lr: [0.1\n  name: adamw\n")
    return Bad(_train(ws, config=config), [str(config)], ["not valid YAML"])


def config_not_a_mapping(ws):
    config = ws / "bad.yaml"
    config.write_text("- optim\n- data\n")
    return Bad(_train(ws, config=config), [str(config)], ["mapping"])


def config_missing(ws):
    config = ws / "no_such.yaml"
    return Bad(_train(ws, config=config), [str(config)], ["not found"])


def override_out_of_range(ws):
    return Bad(_train(ws, extra=["optim.lr=-1"]), ["optim.lr"], ["expected > 0"])


# --- checkpoints ---------------------------------------------------------------------------------

def _best(ws: Path) -> Path:
    return ws / "run" / "checkpoints" / "best.pt"


def ckpt_text_file(ws):
    _best(ws).write_text("this is not a checkpoint\n")
    return Bad(_predict_case(ws, "--case", ws / "src" / CASES[0]), [str(_best(ws))], ["checkpoint"],
               output=ws / "new_mask.nii.gz")


def ckpt_truncated(ws):
    _best(ws).write_bytes(_best(ws).read_bytes()[:5000])
    return Bad(_predict_manifest(ws, _raw(ws)), [str(_best(ws))], ["checkpoint"])


def ckpt_plain_state_dict(ws):
    """A valid torch file holding only weights, not a brats-seg checkpoint."""
    import torch

    state = torch.load(_best(ws), weights_only=True)["model"]
    path = ws / "weights.pt"
    torch.save(state, path)
    return Bad(["predict", "--model", path, "--case", ws / "src" / CASES[0], "--out", ws / "new_mask.nii.gz",
                "--threads", "1"], [str(path)], ["checkpoint"], output=ws / "new_mask.nii.gz")


def ckpt_future_version(ws):
    import torch

    payload = torch.load(_best(ws), weights_only=True)
    payload["version"] = 99
    torch.save(payload, _best(ws))
    return Bad(_predict_manifest(ws, _raw(ws)), [str(_best(ws))], ["checkpoint"])


def ckpt_without_meta(ws):
    """The brats-seg format marker but no model metadata (e.g. written by another tool)."""
    import torch

    payload = torch.load(_best(ws), weights_only=True)
    del payload["meta"]
    torch.save(payload, _best(ws))
    return Bad(_predict_case(ws, "--case", ws / "src" / CASES[0]), [str(_best(ws))], output=ws / "new_mask.nii.gz")


def ckpt_weights_of_another_model(ws):
    """Metadata and weights disagree (weights from a wider model): refused, not a state_dict traceback."""
    import torch

    payload = torch.load(_best(ws), weights_only=True)
    payload["meta"]["model_kwargs"]["features"] = [8, 16, 32]
    torch.save(payload, _best(ws))
    return Bad(_predict_case(ws, "--case", ws / "src" / CASES[0]), [str(_best(ws))], output=ws / "new_mask.nii.gz")


def ckpt_unknown_model_name(ws):
    import torch

    payload = torch.load(_best(ws), weights_only=True)
    payload["meta"]["model"] = "no_such_net"
    torch.save(payload, _best(ws))
    return Bad(_predict_case(ws, "--case", ws / "src" / CASES[0]), [str(_best(ws))], output=ws / "new_mask.nii.gz")


# --- command-line values -------------------------------------------------------------------------

def shard_not_i_of_n(ws):
    return Bad(_preprocess(ws, _raw(ws), "--shard", "1-of-2"), ["--shard"], ["I/N"])


def shard_out_of_range(ws):
    return Bad(_predict_manifest(ws, _raw(ws), "--shard", "2/2"), ["--shard"], ["out of range"])


def shard_zero_count(ws):
    return Bad(_preprocess(ws, _raw(ws), "--shard", "0/0"), ["--shard"], ["out of range"])


def spacing_not_a_number(ws):
    return Bad(_preprocess(ws, _raw(ws), "--spacing", "nan"), ["--spacing"])


# --- image files ----------------------------------------------------------------------------------

def _four(ws: Path, case: str = CASES[0], **replace: Path) -> list:
    return [x for c in CHANNELS for x in (f"--{c}", replace.get(c, case_file(ws, case, c)))]


def image_truncated_gz(ws):
    path = case_file(ws, CASES[0], "t2")
    path.write_bytes(path.read_bytes()[:-200])
    return Bad(_predict_case(ws, "--case", ws / "src" / CASES[0]), [str(path)], ["truncated"],
               output=ws / "new_mask.nii.gz")


def image_header_cut_short(ws):
    """An uncompressed .nii shorter than its 348-byte header, found by ingestion."""
    import gzip

    gz = case_file(ws, CASES[2], "t2")
    path = gz.with_name(gz.name.removesuffix(".gz"))
    path.write_bytes(gzip.decompress(gz.read_bytes())[:200])
    gz.unlink()
    return Bad(["ingest", ws / "src", "--out", _raw(ws)], [str(path)], ["truncated"])


def image_bad_qform_quaternion(ws):
    """qform quaternion (b, c, d) = (1, 1, 1): b^2 + c^2 + d^2 > 1, no rotation has it (header damage)."""
    import gzip
    import struct

    path = ws / "outside" / "t1_bad_qform.nii.gz"
    raw = bytearray(gzip.decompress(case_file(ws, CASES[0], "t1").read_bytes()))
    raw[256:268] = struct.pack("<3f", 1.0, 1.0, 1.0)  # quatern_b, quatern_c, quatern_d
    path.write_bytes(gzip.compress(bytes(raw)))
    return Bad(_predict_case(ws, *_four(ws, t1=path)), [str(path)], output=ws / "new_mask.nii.gz")


def image_huge_vox_offset(ws):
    """vox_offset (where the voxels start) set to 3e38 in an uncompressed .nii."""
    import gzip

    path = ws / "outside" / "t2_offset.nii"
    raw = bytearray(gzip.decompress(case_file(ws, CASES[0], "t2").read_bytes()))
    raw[108:112] = np.array([3e38], "<f4").tobytes()
    path.write_bytes(bytes(raw))
    return Bad(_predict_case(ws, *_four(ws, t2=path)), [str(path)], output=ws / "new_mask.nii.gz")


def image_4d(ws):
    path = ws / "outside" / "t2_4d.nii.gz"
    shutil.copy2(case_file(ws, CASES[0], "t2"), path)
    data = read_nifti(path)
    rewrite_nifti(path, np.stack([data, data], axis=-1))
    return Bad(_predict_case(ws, *_four(ws, t2=path)), [str(path)], ["4 dimensions"], output=ws / "new_mask.nii.gz")


def image_nan(ws):
    path = ws / "outside" / "t1_nan.nii.gz"
    shutil.copy2(case_file(ws, CASES[0], "t1"), path)
    data = read_nifti(path).astype(np.float32)
    data[16, 16, 12] = np.nan
    rewrite_nifti(path, data)
    return Bad(_predict_case(ws, *_four(ws, t1=path)), [str(path)], ["NaN"], output=ws / "new_mask.nii.gz")


def image_on_another_grid(ws):
    path = ws / "outside" / "flair_shifted.nii.gz"
    shutil.copy2(case_file(ws, CASES[0], "flair"), path)
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0, 3] += 3.0
    rewrite_nifti(path, read_nifti(path), affine)
    return Bad(_predict_case(ws, *_four(ws, flair=path)), [str(path)], ["origin"], output=ws / "new_mask.nii.gz")


def mask_on_another_grid(ws):
    """A prediction (or label map) on another grid than the truth's label map."""
    folder = ws / "masks_elsewhere"
    shutil.copytree(ws / "pred" / "masks", folder)
    path = folder / f"{CASES[1]}.nii.gz"
    rewrite_nifti(path, read_nifti(path)[:-2])
    return Bad(_evaluate(ws, pred=folder), [str(path)], ["grid"], output=ws / "new_eval")


def mask_labels_outside_convention(ws):
    folder = ws / "masks_elsewhere"
    shutil.copytree(ws / "pred" / "masks", folder)
    path = folder / f"{CASES[2]}.nii.gz"
    data = read_nifti(path)
    data[1, 1, 1] = 7
    rewrite_nifti(path, data)
    return Bad(_evaluate(ws, pred=folder) + ["--pred-convention", "brats2021"], [str(path)], ["[0, 1, 2, 7]"],
               output=ws / "new_eval")


# --- shards ---------------------------------------------------------------------------------------

def merge_with_a_shard_missing(ws):
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess

    out = ws / "sharded"
    run_preprocess(_raw(ws), out, PreprocessConfig(), workers=1, shard=(0, 2))
    return Bad(["merge", out], [str(out)], ["[1] of 2"])


def merge_shards_of_different_configs(ws):
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.manifests import PREPROCESSED
    from brats_seg.preprocess.stage import run_preprocess

    out = ws / "sharded"
    run_preprocess(_raw(ws), out, PreprocessConfig(), workers=1, shard=(0, 2))
    run_preprocess(_raw(ws), out / "other", PreprocessConfig(spacing=(2.0, 2.0, 2.0)), workers=1, shard=(1, 2))
    shutil.copy2(PREPROCESSED.path(out / "other", (1, 2)), PREPROCESSED.path(out, (1, 2)))
    shutil.rmtree(out / "other")
    return Bad(["merge", out], [str(out)], ["different configs"])


def ckpt_plain_pickle(ws):
    """A harmless plain pickle (protocol 4, not torch's zip format) given as the model."""
    import pickle

    path = ws / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    return Bad(["predict", "--model", path, "--case", ws / "src" / CASES[0], "--out", ws / "new_mask.nii.gz",
                "--threads", "1"], [str(path)], ["checkpoint"], output=ws / "new_mask.nii.gz")


def pipeline_not_utf8(ws):
    path = ws / "pipeline.yaml"
    path.write_bytes(b"stages:\n  - \xff\xfe\x80 binary\n")
    return Bad(["run", path, "--workdir", ws / "new_workdir"], [str(path)], output=ws / "new_workdir")


BAD_INPUTS: list[Callable[[Path], Bad]] = [
    # manifests
    raw_invalid_json, raw_empty_file, raw_not_utf8, raw_not_an_object, raw_case_missing_key, raw_missing_stage,
    raw_wrong_schema_version, raw_deeply_nested_json, raw_is_preprocessed, preprocessed_is_raw,
    raw_duplicate_case_ids, raw_case_id_with_path, raw_manifest_missing, raw_file_changed_since_written,
    raw_path_with_dotdot, raw_absolute_path, raw_symlink_out_of_root,
    pre_array_missing, pre_path_with_dotdot, pre_absolute_path, pre_symlink_out_of_root, pre_array_garbage,
    pre_array_truncated,
    # configs
    config_unknown_key, config_unknown_nested_key, config_wrong_type, config_not_yaml, config_broken_yaml,
    config_not_a_mapping, config_missing, override_out_of_range,
    # checkpoints
    ckpt_text_file, ckpt_truncated, ckpt_plain_state_dict, ckpt_future_version, ckpt_without_meta,
    ckpt_weights_of_another_model, ckpt_unknown_model_name, ckpt_plain_pickle,
    # command-line values
    shard_not_i_of_n, shard_out_of_range, shard_zero_count, spacing_not_a_number,
    # image files, headers, label maps
    image_truncated_gz, image_header_cut_short, image_bad_qform_quaternion, image_huge_vox_offset, image_4d,
    image_nan,
    image_on_another_grid, mask_on_another_grid, mask_labels_outside_convention,
    # shard sets, pipeline files
    merge_with_a_shard_missing, merge_shards_of_different_configs, pipeline_not_utf8,
]


# ---------------------------------------------------------------------------------------------- one bad case in a batch

@dataclass
class BadCase:
    """One broken case inside a batch run (preprocess or predict --manifest over raw.json).

    Documented batch behaviour (README, "Batch behaviour"): the case is refused with one `error:` line
    and listed under `rejected`, the other cases are done or skipped, the command exits 1.
    """

    argv: list
    case: str
    names: list[str]  # each must appear in the case's error line
    says: list[str]
    out_dir: Path  # the batch's output folder
    manifest: str  # its manifest's name in out_dir


def _bad_case_preprocess(ws: Path, names: list[str], says: list[str]) -> BadCase:
    return BadCase(_preprocess(ws, _raw(ws)), CASES[1], names, says, ws / "pre", "preprocessed.json")


def _bad_case_predict(ws: Path, names: list[str], says: list[str]) -> BadCase:
    """Into a fresh folder: an existing mask made from the same input bytes is reused, never re-read."""
    out = ws / "new_pred"
    argv = ["predict", "--model", ws / "run", "--manifest", _raw(ws), "--out", out, "--threads", "1"]
    return BadCase(argv, CASES[1], names, says, out, "predictions.json")


def _valid_copy_outside(ws: Path, channel: str) -> Path:
    target = ws / "outside" / CASES[1] / f"{CASES[1]}_{channel}.nii.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(case_file(ws, CASES[1], channel), target)
    return target


def case_path_with_dotdot(ws, command):
    _valid_copy_outside(ws, "t1")
    rel = f"../outside/{CASES[1]}/{CASES[1]}_t1.nii.gz"
    edit_json(_raw(ws), lambda m: m["cases"][1]["images"]["t1"].update(path=rel))
    return command(ws, [CASES[1], rel], ["'..'"])


def case_absolute_path(ws, command):
    target = _valid_copy_outside(ws, "t2")
    edit_json(_raw(ws), lambda m: m["cases"][1]["images"]["t2"].update(path=str(target)))
    return command(ws, [CASES[1], str(target)], ["absolute"])


def case_symlink_out_of_root(ws, command):
    path = case_file(ws, CASES[1], "t1ce")
    target = _valid_copy_outside(ws, "t1ce")
    path.unlink()
    path.symlink_to(target)  # same bytes, same sha256: only where it lives is wrong
    return command(ws, [CASES[1]], ["outside"])


def case_file_changed(ws, command):
    path = case_file(ws, CASES[1], "flair")
    data = read_nifti(path)
    data[16, 16, 12] += 1
    rewrite_nifti(path, data)
    return command(ws, [str(path)], ["changed since the manifest was written"])


def case_file_truncated(ws, command):
    path = case_file(ws, CASES[1], "t1")
    path.write_bytes(path.read_bytes()[:-300])
    return command(ws, [str(path)], ["changed since the manifest was written"])


def case_file_deleted(ws, command):
    path = case_file(ws, CASES[1], "t2")
    path.unlink()
    return command(ws, [str(path)], ["not found"])


BAD_CASES = [case_path_with_dotdot, case_absolute_path, case_symlink_out_of_root, case_file_changed,
             case_file_truncated, case_file_deleted]
BATCH_COMMANDS = {"preprocess": _bad_case_preprocess, "predict": _bad_case_predict}
