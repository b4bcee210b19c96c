"""Property-based fuzzing (hypothesis, bounded) of the readers that take user files:

- brats_seg.io.volume.read_volume and read_volume_verified on mutated NIfTI bytes: byte flips,
  overwritten runs, truncations and insertions of a small valid .nii; the same mutations inside a
  .nii.gz whose gzip container is valid (so the NIfTI decoder, not the CRC check, meets them); and
  mutations of the .nii.gz bytes themselves.
- brats_seg.io.manifest.load_manifest on mutated manifest JSON: byte-level mutations of a valid raw
  manifest's text, and structural ones (any JSON value put at any place of the manifest).

The only exception allowed is brats_seg.errors.InputError (the documented error: exit code 2 and one
line at the CLI). No other exception type, and no hang: each example runs under an alarm, and under
an address-space limit so a header that claims a huge volume fails fast instead of exhausting memory.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import resource
import signal
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brats_seg.errors import InputError
from brats_seg.io.volume import read_volume, read_volume_verified
from brats_seg.io.manifest import load_manifest

pytestmark = pytest.mark.slow

EXAMPLES = 300
PER_EXAMPLE_S = 20
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="brats_fuzz_"))


def _valid_nifti() -> bytes:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 100, (6, 5, 4)).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 5], [0, -1.0, 0, 4], [0, 0, 1.2, -2], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img.to_bytes()


NII = _valid_nifti()
NII_GZ = gzip.compress(NII, mtime=0)


# NIfTI-1 header fields (offset, numpy type): sizeof_hdr, dim[0..7], intent_p1..3, intent_code, datatype,
# bitpix, slice_start, pixdim[0..7], vox_offset, scl_slope, scl_inter, slice_end, cal_max/min, qform_code,
# sform_code, quatern_b/c/d, qoffset_x/y/z, srow_x/y/z
HEADER_FIELDS = ([(0, "<i4")] + [(40 + 2 * i, "<i2") for i in range(8)] + [(56 + 4 * i, "<f4") for i in range(3)]
                 + [(68, "<i2"), (70, "<i2"), (72, "<i2"), (74, "<i2")] + [(76 + 4 * i, "<f4") for i in range(8)]
                 + [(108, "<f4"), (112, "<f4"), (116, "<f4"), (120, "<i2"), (124, "<f4"), (128, "<f4"),
                    (252, "<i2"), (254, "<i2")] + [(256 + 4 * i, "<f4") for i in range(18)])
NASTY_INTS = [-32768, -1, 0, 1, 2, 3, 4, 5, 7, 8, 16, 64, 255, 256, 511, 1024, 2048, 4096, 32767]
NASTY_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3e38, -3e38, float("inf"), float("-inf"), float("nan"), 352.0,
                348.0, 1e9]


@st.composite
def mutated(draw, base: bytes, header_bias: int = 352) -> bytes:
    """`base` with a few random edits; most land in the header, where the structure is."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        limit = min(len(data), header_bias) if draw(st.booleans()) else len(data)
        pos = draw(st.integers(0, limit - 1))
        kind = draw(st.sampled_from(["byte", "run", "insert", "delete", "int16", "float32", "field"]))
        if kind == "field" and header_bias == 352 and len(data) >= 352:  # a NIfTI header field, aligned
            offset, dtype = draw(st.sampled_from(HEADER_FIELDS))
            value = draw(st.sampled_from(NASTY_FLOATS) if "f" in dtype else
                         st.sampled_from(NASTY_INTS) | st.integers(-32768, 32767))
            data[offset:offset + np.dtype(dtype).itemsize] = np.array([value], dtype).tobytes()
            continue
        if kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "run":
            data[pos:pos + 4] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "int16":  # dims, datatype, bitpix, codes live in int16 fields
            data[pos:pos + 2] = int(draw(st.integers(-32768, 32767))).to_bytes(2, "little", signed=True)
        elif kind == "float32":  # pixdim, vox_offset, scl_*, quaternions, srow live in float32 fields
            value = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
            data[pos:pos + 4] = np.float32(value).tobytes()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@contextlib.contextmanager
def _bounded():
    """An alarm (no hang) and an address-space limit (a huge claimed volume fails fast)."""
    def alarm(signum, frame):
        raise TimeoutError(f"a reader ran longer than {PER_EXAMPLE_S} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        used = int(next(line for line in f if line.startswith("VmSize")).split()[1]) * 1024
    limit = used + (3 << 30)
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(PER_EXAMPLE_S)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _only_input_errors(call) -> None:
    with _bounded():
        try:
            call()
        except InputError:
            pass
        except TimeoutError as exc:
            pytest.fail(str(exc))
        except BaseException as exc:  # noqa: BLE001 - anything else is what this test looks for
            pytest.fail(f"{type(exc).__name__} escaped (only InputError is allowed): {exc}"[:500])


def _write(name: str, blob: bytes) -> Path:
    path = WORK / name
    path.write_bytes(blob)
    return path


def _read_both_ways(path: Path, blob: bytes, allow_4d: bool) -> None:
    _only_input_errors(lambda: read_volume(path, allow_4d=allow_4d))
    _only_input_errors(lambda: read_volume_verified(path, hashlib.sha256(blob).hexdigest(), allow_4d=allow_4d))


def test_the_base_files_are_valid():
    for name, blob in (("base.nii", NII), ("base.nii.gz", NII_GZ)):
        data, geom = read_volume(_write(name, blob))
        assert data.shape == (6, 5, 4) and geom.shape == (6, 5, 4)


# Hostile inputs found by these fuzzers, kept as fixed cases (they run before any random example).
KNOWN_NII = {
    "shorter_than_the_header": NII[:200],
    "impossible_qform_quaternion": NII[:256] + np.array([1, 1, 1], "<f4").tobytes() + NII[268:],
    "huge_vox_offset": NII[:108] + np.array([3e38], "<f4").tobytes() + NII[112:],
}
KNOWN_MANIFESTS = {
    "nested_deeper_than_the_recursion_limit": b"[" * 100_000 + b"]" * 100_000,
    "infinite_schema_version": b'{"schema_version": 1e999}',
}


@pytest.mark.parametrize("name", sorted(KNOWN_NII))
def test_known_hostile_nifti(name):
    blob = KNOWN_NII[name]
    _read_both_ways(_write("known.nii", blob), blob, False)
    gz = gzip.compress(blob, mtime=0)
    _read_both_ways(_write("known.nii.gz", gz), gz, False)


@pytest.mark.parametrize("name", sorted(KNOWN_MANIFESTS))
def test_known_hostile_manifests(name):
    _only_input_errors(lambda: load_manifest(_write("known.json", KNOWN_MANIFESTS[name])))


@FUZZ
@given(blob=mutated(NII), allow_4d=st.booleans())
def test_fuzz_nii(blob, allow_4d):
    _read_both_ways(_write("fuzz.nii", blob), blob, allow_4d)


@FUZZ
@given(inner=mutated(NII), allow_4d=st.booleans())
def test_fuzz_nii_gz_with_a_valid_container(inner, allow_4d):
    blob = gzip.compress(inner, mtime=0)
    _read_both_ways(_write("fuzz_inner.nii.gz", blob), blob, allow_4d)


@FUZZ
@given(blob=mutated(NII_GZ, header_bias=64), allow_4d=st.booleans())
def test_fuzz_nii_gz_bytes(blob, allow_4d):
    _read_both_ways(_write("fuzz.nii.gz", blob), blob, allow_4d)


# ---------------------------------------------------------------------------------------------- manifests

def _valid_manifest() -> dict:
    digest = "0" * 64
    image = {"path": "c1/c1_t1.nii.gz", "sha256": digest, "shape": [6, 5, 4], "dtype": "float32",
             "spacing": [1.0, 1.0, 1.2], "affine": [[-1, 0, 0, 5], [0, -1, 0, 4], [0, 0, 1.2, -2], [0, 0, 0, 1]],
             "orientation": "LPS", "qform_code": 1, "sform_code": 1}
    case = {"id": "c1", "root": 0, "channels": ["t1", "t1ce"], "label_convention": "brats2021", "warnings": [],
            "images": {"t1": image, "t1ce": {**image, "path": "c1/c1_t1ce.nii.gz"}},
            "seg": {**image, "path": "c1/c1_seg.nii.gz", "dtype": "uint8"}}
    return {"schema_version": 1, "stage": "raw", "created_at": "2025-01-01T00:00:00+00:00",
            "brats_seg_version": "0.1.0", "config": {"layout": "auto"}, "input_manifest_sha256": None,
            "roots": ["data"], "rejected": [], "cases": [case, {**case, "id": "c2"}]}


MANIFEST = _valid_manifest()
MANIFEST_TEXT = json.dumps(MANIFEST, indent=2).encode()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _places(node, path=()):
    """Every (container path, key) of a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key
            yield from _places(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield path, i
            yield from _places(value, path + (i,))


PLACES = list(_places(MANIFEST))


def test_the_base_manifest_is_valid():
    assert load_manifest(_write("base.json", MANIFEST_TEXT))["cases"][1]["id"] == "c2"


@FUZZ
@given(text=mutated(MANIFEST_TEXT, header_bias=len(MANIFEST_TEXT)))
def test_fuzz_manifest_bytes(text):
    _only_input_errors(lambda: load_manifest(_write("fuzz.json", text)))


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(PLACES), JSON_VALUES, st.sampled_from(["set", "delete"])),
                      min_size=1, max_size=4))
def test_fuzz_manifest_structure(edits):
    manifest = json.loads(MANIFEST_TEXT)
    for (path, key), value, action in edits:
        node = manifest
        try:
            for part in path:
                node = node[part]
            if action == "delete":
                del node[key]
            else:
                node[key] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this place
    text = json.dumps(manifest, allow_nan=True).encode()
    _only_input_errors(lambda: load_manifest(_write("fuzz_structure.json", text)))
