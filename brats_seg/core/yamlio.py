"""Reading a user's YAML file (configs, pipelines): safe_load only, every failure one InputError."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from brats_seg.errors import InputError


def read_yaml(path: Path, missing: str, expected: str) -> Any:
    """The parsed document. `missing` is the message for an absent file, `expected` names what it should be."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {' '.join(str(exc).split())}")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot be read as text ({type(exc).__name__}); expected {expected}")
