"""Typed loading of dataclass configs from YAML plus `key=value` overrides (any dataclass).

Every key is checked against the dataclass field types, so a typo or a wrong type is an
InputError that names the key and the expected type instead of a crash an hour into training.
Float fields also accept YAML strings such as `3e-5` (PyYAML reads exponents without a dot as
strings); ints are accepted for floats; a single int is accepted for a fixed-length tuple of ints
(patch 64 means 64, 64, 64). Nothing else is coerced.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

from brats_seg.errors import InputError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0])
        return f"a list of {inner}s" if args[-1] is Ellipsis else f"a list of {len(args)} {inner}s"
    return {int: "int", float: "float", bool: "bool (true/false)", str: "string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the field type `tp`; return it converted, or raise InputError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin is tuple:
        return _coerce_tuple(value, tp, key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise InputError(key, f"got {value!r}; expected {_type_name(tp)}")


def _coerce_tuple(value: Any, tp: Any, key: str) -> tuple:
    args = typing.get_args(tp)
    if isinstance(value, int) and not isinstance(value, bool) and args[0] is int and args[-1] is not Ellipsis:
        value = [value] * len(args)
    if not isinstance(value, (list, tuple)):
        raise InputError(key, f"got {value!r}; expected {_type_name(tp)}")
    if args[-1] is Ellipsis:
        if not value:
            raise InputError(key, f"got an empty list; expected {_type_name(tp)}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if len(value) != len(args):
        raise InputError(key, f"got {list(value)!r}; expected {_type_name(tp)}")
    return tuple(_coerce(v, a, key) for v, a in zip(value, args))


def build_typed(cls: type, mapping: Any, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a (nested) mapping; unknown keys and bad types raise InputError."""
    where = prefix.rstrip(".") or "config"
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise InputError(where, f"got {mapping!r}; expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise InputError(f"{prefix}{unknown[0]}", f"unknown key; valid keys under {where}: {', '.join(names)}")
    kwargs = {}
    for name, value in mapping.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_typed(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-3' -> (['optim', 'lr'], 0.001); the value is read as YAML (lists, bools...)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(text, "override is not of the form section.key=value (e.g. optim.lr=0.001)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise InputError(key, f"value {raw!r} is not valid YAML ({exc.__class__.__name__})")
    return key.split("."), value


def apply_overrides(mapping: dict, overrides: Sequence[str]) -> dict:
    """Set each dotted key in a copy of `mapping` (checking happens later in build_typed)."""
    import copy

    merged = copy.deepcopy(mapping)
    for text in overrides:
        parts, value = parse_override(text)
        node = merged
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(".".join(parts[: i + 1]), f"is a value, not a section; cannot set {text!r}")
            node = child
        node[parts[-1]] = value
    return merged


def load_yaml_mapping(path: Path | None) -> dict:
    """The YAML file as a dict ({} for None); unreadable or non-mapping files are InputErrors."""
    from brats_seg.core.yamlio import read_yaml

    if path is None:
        return {}
    path = Path(path)
    data = read_yaml(path, "config file not found; expected a YAML file such as pipelines/train_cpu.yaml", "a YAML file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "expected a YAML mapping of sections (model, data, optim, ...) at the top level")
    return data


def to_dict(cfg: Any) -> dict:
    """A JSON/YAML-able dict (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


