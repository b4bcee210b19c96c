"""Reading a user's YAML file (configs, pipelines): safe_load only, bounded, every failure one InputError.

Bounded because a config is untrusted input: a few hundred bytes of nested aliases (a "billion
laughs" document) expand to gigabytes, a recursive alias or very deep nesting ends in a
RecursionError in whatever walks the result. The document is composed into its node graph first
and measured (size, nesting depth, expanded node count, alias cycles) before anything is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from brats_seg.core.inputfile import require_regular_file
from brats_seg.errors import InputError

MAX_BYTES = 1 << 20  # configs and pipeline files are a few KB
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_NODES = 100_000  # scalars, lists and mappings after alias expansion


def read_yaml(path: Path, missing: str, expected: str) -> Any:
    """The parsed document. `missing` is the message for an absent file, `expected` names what it should be."""
    import yaml

    path = Path(path)
    require_regular_file(path, missing, expected)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(path, f"is {path.stat().st_size} bytes, larger than the {MAX_BYTES} a YAML "
                                   f"file may have; expected {expected}")
        text = path.read_text()
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            check_node_graph(path, node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {' '.join(str(exc).split())}")
    except RecursionError:
        raise InputError(path, f"YAML nested too deeply (more than {MAX_DEPTH} levels); expected {expected}")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot be read as text ({type(exc).__name__}); expected {expected}")


def check_node_graph(path: Path, root: Any) -> None:
    """Refuse alias cycles, nesting deeper than MAX_DEPTH and more than MAX_NODES expanded nodes."""
    import yaml

    count = 0
    stack: list[tuple[Any, int, frozenset]] = [(root, 1, frozenset())]
    while stack:
        node, depth, ancestors = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise InputError(path, f"YAML expands to more than {MAX_NODES} values (aliases repeat "
                                   "whole subtrees); write the values out or shorten the file")
        if depth > MAX_DEPTH:
            raise InputError(path, f"YAML nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in ancestors:
            raise InputError(path, "YAML alias refers to a node that contains it (a recursive structure)")
        inner = ancestors | {id(node)}
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
        stack.extend((child, depth + 1, inner) for child in children)
