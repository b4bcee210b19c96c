"""data_manifests/ documents the manifest format: the schema there is the one the package validates
with, and each example manifest passes the package's own loader, so the documentation cannot drift."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_seg.core.hashing import sha256_file
from brats_seg.errors import InputError
from brats_seg.io.manifest import SCHEMA_FILE, STAGES, load_manifest, resolve_inside

FOLDER = Path(__file__).resolve().parents[2] / "data_manifests"
EXAMPLES = {stage: FOLDER / f"{stage}.example.json" for stage in STAGES}
PATH_KEYS = ("path", "image", "seg", "fg", "mask")


def _paths(node) -> list[str]:
    """Every file path an example stores (case files, arrays, masks), wherever it is nested."""
    if isinstance(node, dict):
        own = [v for k, v in node.items() if k in PATH_KEYS and isinstance(v, str)]
        return own + [p for v in node.values() for p in _paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in _paths(v)]
    return []


def test_documented_schema_is_the_one_the_package_validates_with():
    documented = FOLDER / "manifest.schema.json"
    assert not documented.is_symlink(), "a symlink breaks in Docker COPY, zip archives and Windows checkouts"
    assert documented.read_bytes() == SCHEMA_FILE.read_bytes(), f"{documented} differs from {SCHEMA_FILE}"


def test_schema_file_is_generated_from_the_models():
    from brats_seg.contracts.schema import schema_text

    assert SCHEMA_FILE.read_text() == schema_text(), "run: python -m brats_seg.contracts.schema"


@pytest.mark.parametrize("stage", STAGES)
def test_examples_satisfy_the_generated_json_schema(stage: str):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(EXAMPLES[stage].read_text()), json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("stage", STAGES)
def test_example_passes_the_package_validator(stage: str):
    manifest = load_manifest(EXAMPLES[stage], stage=stage)
    assert manifest["cases"], "an example should show at least one case"


@pytest.mark.parametrize("stage", STAGES)
def test_example_paths_are_relative_and_stay_inside(stage: str):
    manifest = json.loads(EXAMPLES[stage].read_text())
    paths = _paths(manifest["cases"]) + list(manifest.get("roots", []))
    assert paths
    for rel in paths:
        resolve_inside(FOLDER, rel, str(EXAMPLES[stage]))  # raises on absolute paths and '..'


@pytest.mark.parametrize("stage", ["preprocessed", "predictions"])
def test_examples_chain_to_the_raw_example(stage: str):
    manifest = json.loads(EXAMPLES[stage].read_text())
    assert manifest["config"]["raw_manifest"] == EXAMPLES["raw"].name
    assert manifest["input_manifest_sha256"] == sha256_file(EXAMPLES["raw"])


def test_validator_rejects_an_example_missing_a_required_field(tmp_path: Path):
    manifest = json.loads(EXAMPLES["predictions"].read_text())
    del manifest["cases"][0]["sha256"]
    broken = tmp_path / "predictions.json"
    broken.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="does not match the manifest schema"):
        load_manifest(broken, stage="predictions")


def test_readme_describes_every_file():
    readme = (FOLDER / "README.md").read_text()
    missing = [p.name for p in sorted(FOLDER.iterdir()) if p.name != "README.md" and f"`{p.name}`" not in readme]
    assert not missing, f"data_manifests/README.md does not describe {missing}"
