"""`brats-seg bench contracts`: reading a large raw manifest, the typed models against the compiled
JSON-Schema validator that checked manifests before them.

Both contenders start from the file's bytes and end with a checked manifest: (a) the package's
load path (json.loads + the pydantic models: types, ranges and meaning), (b) json.loads +
fastjsonschema compiled from the same generated schema (types and ranges only, no meaning checks).
The manifest repeats the example raw case of data_manifests/ under new ids.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from brats_seg.bench.common import alternate, best_round_median, markdown_table

EXAMPLE = Path(__file__).resolve().parents[2] / "data_manifests" / "raw.example.json"


def big_manifest(cases: int, example: Path = EXAMPLE) -> bytes:
    """A raw manifest of `cases` copies of the example's first case (ids Case_00000, ...)."""
    manifest = json.loads(example.read_text())
    template = manifest["cases"][0]
    manifest["cases"] = []
    for i in range(cases):
        case = copy.deepcopy(template)
        case["id"] = f"Case_{i:05d}"
        manifest["cases"].append(case)
    return json.dumps(manifest).encode()


def run_contracts_bench(cases: int = 1000, rounds: int = 5) -> dict:
    import fastjsonschema

    from brats_seg.contracts.manifests import RawManifest
    from brats_seg.contracts.schema import manifest_schema

    blob = big_manifest(cases)
    compiled = fastjsonschema.compile(manifest_schema())
    contenders = {"models": lambda: RawManifest.model_validate(json.loads(blob)),
                  "fastjsonschema": lambda: compiled(json.loads(blob))}
    calls = alternate(contenders, rounds=rounds, block=3)
    times = {name: best_round_median(c) for name, c in calls.items()}
    return {"cases": cases, "bytes": len(blob), "seconds": times,
            "ratio_models_over_fastjsonschema": times["models"] / times["fastjsonschema"]}


def format_contracts_table(report: dict) -> str:
    s = report["seconds"]
    rows = [["typed models (pydantic: types, ranges, meaning)", f"{s['models'] * 1000:.0f}"],
            ["fastjsonschema (same schema: types and ranges)", f"{s['fastjsonschema'] * 1000:.0f}"]]
    return (f"raw manifest of {report['cases']} cases ({report['bytes'] / 1e6:.1f} MB), best-round median\n\n"
            + markdown_table(["validator", "ms"], rows, "lr")
            + f"\n\nmodels / fastjsonschema: {report['ratio_models_over_fastjsonschema']:.2f}")
