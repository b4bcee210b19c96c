"""Manifests: schema round trip, refusal of bad manifests, path containment, atomic writes."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest

from brats_seg.core import atomic, hashing
from brats_seg.io import manifest as mf
from brats_seg.errors import InputError
from brats_seg.ingest.stage import ingest
from tests.conftest import make_case


@pytest.fixture
def raw_manifest(tmp_path) -> tuple[Path, dict]:
    make_case(tmp_path / "ds", "c1")
    make_case(tmp_path / "ds", "c2", seg=False)
    out = tmp_path / "raw.json"
    return out, ingest([tmp_path / "ds"], out)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_schema_round_trip(raw_manifest):
    path, written = raw_manifest
    loaded = mf.load_manifest(path, stage="raw")
    assert loaded == json.loads(json.dumps(written))
    assert [c["id"] for c in loaded["cases"]] == ["c1", "c2"]
    assert loaded["schema_version"] == mf.SCHEMA_VERSION and loaded["stage"] == "raw"
    for key in ("created_at", "brats_seg_version", "config", "input_manifest_sha256", "roots"):
        assert key in loaded
    # saving what was loaded and loading it again changes nothing
    again = path.with_name("again.json")
    mf.save_manifest(again, loaded)
    assert mf.load_manifest(again) == loaded


def test_new_manifest_has_the_required_fields():
    m = mf.new_manifest("preprocessed", {"a": 1}, input_sha256="0" * 64)
    assert m["schema_version"] == 1 and m["stage"] == "preprocessed" and m["cases"] == []
    assert m["input_manifest_sha256"] == "0" * 64
    assert m["config"] == {"a": 1}


def test_wrong_schema_version_is_an_input_error(raw_manifest, tmp_path):
    path, m = raw_manifest
    bad = write_json(tmp_path / "v2.json", {**m, "schema_version": 2})
    with pytest.raises(InputError) as info:
        mf.load_manifest(bad)
    assert info.value.where == str(bad)
    assert info.value.message == "schema_version 2 is not supported; expected 1"


def test_wrong_stage_is_an_input_error(raw_manifest):
    path, _ = raw_manifest
    with pytest.raises(InputError) as info:
        mf.load_manifest(path, stage="preprocessed")
    assert info.value.message == "is a 'raw' manifest; expected a 'preprocessed' manifest"


def test_unknown_stage_is_an_input_error(raw_manifest, tmp_path):
    _, m = raw_manifest
    bad = write_json(tmp_path / "s.json", {**m, "stage": "cooked"})
    with pytest.raises(InputError) as info:
        mf.load_manifest(bad)
    assert "does not match the manifest schema" in info.value.message


@pytest.mark.parametrize("drop", ["cases", "stage", "created_at", "roots", "cases/0/images", "cases/0/images/t1/sha256"])
def test_missing_keys_are_input_errors(raw_manifest, tmp_path, drop):
    _, m = raw_manifest
    broken = copy.deepcopy(m)
    *parents, last = drop.split("/")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]
    bad = write_json(tmp_path / "missing.json", broken)
    with pytest.raises(InputError) as info:
        mf.load_manifest(bad)
    assert info.value.message.startswith("does not match the manifest schema: ")
    assert "\n" not in info.value.line()


def test_duplicate_case_ids_are_input_errors(raw_manifest, tmp_path):
    _, m = raw_manifest
    dup = copy.deepcopy(m)
    dup["cases"].append(copy.deepcopy(dup["cases"][0]))
    bad = write_json(tmp_path / "dup.json", dup)
    with pytest.raises(InputError) as info:
        mf.load_manifest(bad)
    assert info.value.message == "duplicate case id 'c1'; expected each case once"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_not_a_manifest_is_an_input_error(tmp_path, content):
    p = tmp_path / "x.json"
    p.write_text(content)
    with pytest.raises(InputError):
        mf.load_manifest(p)
    with pytest.raises(InputError):
        mf.load_manifest(tmp_path / "absent.json")


def test_save_refuses_a_manifest_that_breaks_the_schema(tmp_path):
    m = mf.new_manifest("raw", {})  # raw manifests need 'roots'
    with pytest.raises(ValueError):
        mf.save_manifest(tmp_path / "m.json", m)
    assert list(tmp_path.iterdir()) == []


def test_sha256_file(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several read chunks
    assert hashing.sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert hashing.sha256_json({"a": 1, "b": [2]}) == hashing.sha256_json({"b": [2], "a": 1})


# --- path containment ---------------------------------------------------------------------------------

def test_resolve_inside_accepts_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.nii.gz").write_bytes(b"x")
    assert mf.resolve_inside(tmp_path, "a/f.nii.gz", "c1") == (tmp_path / "a" / "f.nii.gz").resolve()


@pytest.mark.parametrize("rel", ["/etc/passwd", "../outside.nii.gz", "a/../../outside.nii.gz", "a/../b.nii.gz", ""])
def test_resolve_inside_refuses_escapes(tmp_path, rel):
    (tmp_path / "root" / "a").mkdir(parents=True)
    with pytest.raises(InputError) as info:
        mf.resolve_inside(tmp_path / "root", rel, "c1")
    assert info.value.where == "c1"


def test_resolve_inside_refuses_a_symlink_out_of_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "f.nii.gz").write_bytes(b"x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file_link.nii.gz").symlink_to(outside / "f.nii.gz")
    for rel in ("link/f.nii.gz", "file_link.nii.gz"):
        with pytest.raises(InputError) as info:
            mf.resolve_inside(root, rel, "c1")
        assert "outside" in info.value.message
    # a symlink that stays inside the root is fine
    (root / "real").mkdir()
    (root / "inner").symlink_to(root / "real", target_is_directory=True)
    assert mf.resolve_inside(root, "inner/x.nii.gz", "c1") == (root / "real" / "x.nii.gz").resolve()


def test_relative_inside(tmp_path):
    (tmp_path / "root" / "c1").mkdir(parents=True)
    assert mf.relative_inside(tmp_path / "root", tmp_path / "root" / "c1" / "f.nii.gz", "c1") == "c1/f.nii.gz"
    with pytest.raises(InputError):
        mf.relative_inside(tmp_path / "root", tmp_path / "elsewhere.nii.gz", "c1")


# --- atomic writes ------------------------------------------------------------------------------------

def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.json"
    atomic.atomic_write_json(p, {"v": 1})
    atomic.atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_atomic_path_never_exposes_a_partial_file(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(p) as tmp:
            assert tmp.parent == p.parent and tmp.name != p.name
            tmp.write_text('{"half": ')
            assert p.read_text() == "old\n"  # the final name still holds the old content
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old\n"
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_save_manifest_crashing_mid_write_keeps_the_old_file(raw_manifest, monkeypatch):
    path, m = raw_manifest
    before = path.read_bytes()
    real_write_text = Path.write_text

    def half_then_crash(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    changed = {**m, "config": {"changed": True}}
    with pytest.raises(OSError):
        mf.save_manifest(path, changed)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(x.name for x in path.parent.iterdir() if x.name.startswith(".")) == []


def test_save_manifest_failing_json_dump_keeps_the_old_file(raw_manifest, monkeypatch):
    path, m = raw_manifest
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise TypeError("not serialisable")

    monkeypatch.setattr(atomic.json, "dumps", boom)
    with pytest.raises(TypeError):
        atomic.atomic_write_json(path, m)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [x for x in path.parent.iterdir() if x.name.startswith(".")]


def test_atomic_path_keeps_nii_gz_suffix_for_the_temp(tmp_path):
    with atomic.atomic_path(tmp_path / "mask.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".")
        tmp.write_bytes(b"x")
    assert (tmp_path / "mask.nii.gz").read_bytes() == b"x"
