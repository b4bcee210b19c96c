"""Typed loading of dataclass configs from YAML plus `key=value` overrides (any dataclass).

Every key is checked against the dataclass field types, so a typo or a wrong type is an
InputError that names the key and the expected type instead of a crash an hour into training.
Float fields also accept YAML strings such as `3e-5` (PyYAML reads exponents without a dot as
strings); ints are accepted for floats; a single int is accepted for a fixed-length tuple of ints
(patch 64 means 64, 64, 64). Nothing else is coerced.

Types are not enough: every float must be finite (1e400 reads as inf), every int must fit 64
bits, and each task declares the range of each numeric field by meaning (a table of Range per
dotted key, checked by check_ranges). load_typed ties it together and names where a bad value
came from (the config file or the override) in the one error line.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

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
            if not -INT_LIMIT <= value < INT_LIMIT:
                raise InputError(key, f"got {_short(value)}; expected an int that fits 64 bits")
            return value
    elif tp is float:
        number = _as_float(value)
        if number is not None:
            if not math.isfinite(number):
                read = f" (read as {number})" if not isinstance(value, float) else ""
                raise InputError(key, f"got {_short(value)}{read}; expected a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise InputError(key, f"got {value!r}; expected {_type_name(tp)}")


INT_LIMIT = 2**63


def _as_float(value: Any) -> float | None:
    """A number or numeric string as a float (inf when too large), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int past the float range
        return math.inf
    except ValueError:
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    data = read_yaml(path, "config file not found; expected a YAML file such as pipelines/train/train_cpu.yaml", "a YAML file")
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




# ---- value ranges ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """The values a numeric field (or each number of a list field) may take; `ordered`: a pair
    whose first value is <= its second (a low..high range)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False
    ordered: bool = False

    def holds(self, value: Any) -> bool:
        """Whether a scalar or each item of a tuple lies in the range (and a pair is ordered)."""
        items = value if isinstance(value, (tuple, list)) else (value,)
        if self.ordered and not (len(items) == 2 and items[0] <= items[1]):
            return False
        return all(self._holds_one(v) for v in items)

    def _holds_one(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return self.high is None or not (v > self.high or (self.high_open and v == self.high))

    def text(self) -> str:
        """'> 0', '>= 1', '>= 0 and < 1', with 'low <= high' for ordered pairs."""
        if self.low is not None and self.high is not None:
            bounds = (f"{'>' if self.low_open else '>='} {_num(self.low)} and "
                      f"{'<' if self.high_open else '<='} {_num(self.high)}")
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            bounds = "finite"
        return f"low <= high, each {bounds}" if self.ordered else bounds


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


def at_least(low: float) -> Range:
    return Range(low=low)


def within(low: float, high: float, high_open: bool = False, low_open: bool = False) -> Range:
    return Range(low=low, high=high, low_open=low_open, high_open=high_open)


def ordered(each: Range) -> Range:
    return dataclasses.replace(each, ordered=True)


def lookup(cfg: Any, dotted: str) -> Any:
    """cfg.section.key for 'section.key' (AttributeError for a key the config lacks: a table bug)."""
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_ranges(cfg: Any, ranges: Mapping[str, Range]) -> None:
    """InputError naming the first field whose value lies outside its Range."""
    for dotted, allowed in ranges.items():
        value = lookup(cfg, dotted)
        if not allowed.holds(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise InputError(dotted, f"got {_short(shown)}; expected {allowed.text()}")


def numeric_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every int/float (or tuple of them) field under dataclass `cls`: the keys a
    range table must cover."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        numbers = typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in (int, float)
        if dataclasses.is_dataclass(tp):
            out += numeric_fields(tp, f"{prefix}{f.name}.")
        elif tp in (int, float) or numbers:
            out.append(f"{prefix}{f.name}")
    return out


def load_typed(cls: type, path: Path | None, overrides: Sequence[str], check: Callable[[Any], None],
               defaults: Mapping[str, Any] | None = None, ranges: Mapping[str, Range] | None = None) -> Any:
    """`cls` from the YAML file plus overrides, type-checked, then `check`ed (ranges and cross-field
    rules). A bad value's InputError keeps naming its key and adds where the value came from (and,
    for a value refused by its type, the field's range from `ranges`)."""
    mapping = apply_overrides(load_yaml_mapping(path), overrides)
    for key, value in (defaults or {}).items():
        mapping.setdefault(key, value)
    try:
        cfg = build_typed(cls, mapping)
        check(cfg)
    except InputError as exc:
        allowed = (ranges or {}).get(exc.where)
        message = f"{exc.message} {allowed.text()}" if allowed and exc.message.endswith("expected a finite number") \
            else exc.message
        raise InputError(exc.where, f"{message} ({value_source(exc.where, path, overrides)})") from None
    return cfg


def value_source(key: str, path: Path | None, overrides: Sequence[str]) -> str:
    """'override optim.lr=1e400', 'config file PATH' or 'the default': where the value of `key` came from."""
    for text in reversed(list(overrides)):
        name = text.partition("=")[0].strip()
        if name == key or name.startswith(key + ".") or key.startswith(name + "."):
            return f"override {' '.join(text.split())}"
    return f"config file {path}" if path is not None else "the default"
