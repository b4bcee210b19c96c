"""`bench contracts`: both validators run on the same generated manifest, and the models catch what
the JSON Schema cannot say (so the faster one is not the weaker one)."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from brats_seg.bench.contracts import big_manifest, format_contracts_table, run_contracts_bench
from brats_seg.contracts.manifests import RawManifest
from brats_seg.contracts.schema import manifest_schema


def test_bench_times_both_validators_on_a_valid_manifest():
    report = run_contracts_bench(cases=20, rounds=1)
    assert report["cases"] == 20 and set(report["seconds"]) == {"models", "fastjsonschema"}
    assert all(s > 0 for s in report["seconds"].values())
    assert "models / fastjsonschema" in format_contracts_table(report)


def test_models_refuse_a_root_index_the_schema_accepts():
    fastjsonschema = pytest.importorskip("fastjsonschema")
    manifest = json.loads(big_manifest(3))
    manifest["cases"][1]["root"] = 7  # the manifest has one root
    fastjsonschema.compile(manifest_schema())(manifest)  # structurally fine
    with pytest.raises(ValidationError, match="root 7 is out of range"):
        RawManifest.model_validate(manifest)
