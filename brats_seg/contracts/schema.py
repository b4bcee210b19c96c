"""The manifest JSON Schema, generated from the typed models (the one source of truth).

    python -m brats_seg.contracts.schema          # rewrite brats_seg/schemas/manifest.schema.json
    python -m brats_seg.contracts.schema --check  # exit 1 when the file and the models differ

data_manifests/manifest.schema.json is a byte copy for readers of the repository (a test keeps
the three in step). The schema states structure and ranges; the meaning checks that JSON Schema
cannot express (a root index within `roots`, listed channels present in `images`, ...) live in
the models' validators.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from brats_seg.contracts.manifests import PredictionsManifest, PreprocessedManifest, RawManifest

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "manifest.schema.json"
AnyManifest = Annotated[Union[RawManifest, PreprocessedManifest, PredictionsManifest], Field(discriminator="stage")]


def manifest_schema() -> dict:
    schema = TypeAdapter(AnyManifest).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "brats-seg stage manifest",
            "description": "One manifest per stage output (raw, preprocessed, predictions). Paths are relative "
                           "to a root (raw: roots[case.root]; others: the manifest's folder) and never leave it. "
                           "Generated from brats_seg/contracts/manifests.py.", **schema}


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = schema_text()
    if "--check" in argv:
        same = SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text() == text
        print("schema is current" if same else f"{SCHEMA_FILE} differs from the models; regenerate it")
        return 0 if same else 1
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
