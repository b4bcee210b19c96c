"""Reading a JSON file the pipeline did not just write: bounded, parsed once, one InputError per problem.

Every stage file (manifests, entry.json, sidecars, summary.json, run.json, dataset.json) can be
damaged or edited by hand. `read_model` reads it with a size bound, parses it into its typed model
and turns any problem, including a wrong type deep inside, into one line that names the file, the
field and the value.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from brats_seg.core.inputfile import require_regular_file
from brats_seg.errors import InputError

MAX_JSON_BYTES = 512 << 20  # a 100 000-case manifest is ~1 GB of RAM as objects; refuse beyond this
MAX_DEPTH = 32  # no file of ours nests deeper than ~8

M = TypeVar("M", bound=BaseModel)


def read_json(path: Path, expected: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed document; InputError when absent, too large, not JSON or nested too deeply."""
    path = Path(path)
    require_regular_file(path, f"not found; expected {expected}", expected)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(path, f"is {size} bytes, more than the {max_bytes} allowed for {expected}")
        data = json.loads(path.read_bytes())
    except RecursionError:
        raise InputError(path, f"JSON nested too deeply; expected {expected}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({getattr(exc, 'msg', type(exc).__name__)}); expected {expected}")
    except (ValueError, OSError) as exc:
        raise InputError(path, f"cannot be read ({type(exc).__name__}); expected {expected}")
    if depth(data) > MAX_DEPTH:
        raise InputError(path, f"JSON nested deeper than {MAX_DEPTH} levels; expected {expected}")
    return data


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def parse_model(path: Path, model: type[M], data: Any, expected: str) -> M:
    """`data` as `model`; a ValidationError becomes one InputError line naming path, field and value."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(path, f"{describe(exc)}; expected {expected}")


def read_model(path: Path, model: type[M], expected: str) -> M:
    return parse_model(path, model, read_json(path, expected), expected)


def describe(exc: ValidationError) -> str:
    """The first error as 'field/path: message (found VALUE)'."""
    err = exc.errors(include_url=False)[0]
    where = "/".join(str(p) for p in err["loc"]) or "(top)"
    message = err["msg"].removeprefix("Value error, ")
    found = "" if err["type"] in ("missing", "value_error") else f" (found {short(err.get('input'))})"
    return f"{where}: {message}{found}"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
