"""The package's architecture, checked from the source alone (AST; nothing is imported, so no torch).

Imports run one way: commands -> stages and tasks -> engine -> models / io -> core. A layer is a set
of packages; MAY_NOT_IMPORT says which layers it must not reach. Every import statement counts,
including the ones inside functions and under `if TYPE_CHECKING:`: a lazy or annotation-only import
is still a dependency.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "brats_seg"

LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("brats_seg.core",),
    "io": ("brats_seg.io", "brats_seg.contracts"),   # file formats: volumes, labels, manifests
    "models": ("brats_seg.models",),
    "engine": ("brats_seg.engine",),
    "stages": ("brats_seg.ingest", "brats_seg.preprocess", "brats_seg.infer", "brats_seg.evaluate",
               "brats_seg.synth"),
    "tasks": ("brats_seg.seg3d", "brats_seg.seg2d"),
    "commands": ("brats_seg.commands", "brats_seg.cli", "brats_seg.__main__", "brats_seg.doctor",
                 "brats_seg.pipeline", "brats_seg.bench"),
}
# The version string and the error type: every layer may import these two, and they import nothing.
BASE = ("brats_seg", "brats_seg.errors")
EVERY_LAYER = frozenset(LAYERS)
MAY_NOT_IMPORT: dict[str, frozenset[str]] = {
    "core": EVERY_LAYER - {"core"},
    "io": EVERY_LAYER - {"io", "core"},
    "models": frozenset({"stages", "tasks", "engine", "commands"}),
    "engine": frozenset({"stages", "tasks", "commands"}),
    "stages": frozenset({"tasks", "commands"}),   # tasks may use a stage (seg3d: infer's sliding window), not back
    "tasks": frozenset({"commands"}),
}
MAX_TOP_LEVEL_MODULES = 8
MONAI_SLIDING_WINDOW = "sliding_window_inference"
MONAI_SLIDING_WINDOW_ONLY_IN = "brats_seg.bench"


@dataclass(frozen=True)
class Import:
    module: str   # the importing module
    line: int
    target: str   # the brats_seg module imported from
    name: str     # the name taken from it ("" for `import target`)

    def __str__(self) -> str:
        what = f"from {self.target} import {self.name}" if self.name else f"import {self.target}"
        return f"{self.module}:{self.line}: {what}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p)))
            for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _known(dotted: str) -> str | None:
    """The longest prefix of `dotted` that is a brats_seg module."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in _sources():
            return ".".join(parts[:end])
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = _sources()[module][0].name == "__init__.py"
    base = package[: len(package) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_of(module: str) -> list[Import]:
    found = []
    for node in ast.walk(_sources()[module][1]):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, t, "") for a in node.names if (t := _known(a.name))]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if not (source == "brats_seg" or source.startswith("brats_seg.")):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in _sources() else _known(source)
                if target:
                    found.append(Import(module, node.lineno, target, "" if target == sub else alias.name))
    return found


@cache
def _all_imports() -> tuple[Import, ...]:
    return tuple(i for m in _sources() for i in _imports_of(m) if i.target != m)


def _layer(module: str) -> str | None:
    for layer, packages in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in packages):
            return layer
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def _private_attribute_uses(module: str) -> list[str]:
    """`mod._name` where `mod` is a brats_seg module bound by an import: the same breach as importing it."""
    tree = _sources()[module][1]
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in _sources():
                    bound[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if (sub := f"{_absolute(module, node)}.{a.name}") in _sources():
                    bound[a.asname or a.name] = sub
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = bound.get(_dotted(node.value) or "")
            if owner and owner != module:
                uses.append(f"{module}:{node.lineno}: {owner}.{node.attr}")
    return uses


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


def test_every_module_belongs_to_a_layer():
    loose = [m for m in _sources() if m not in BASE and _layer(m) is None]
    assert not loose, _report("modules outside every layer; add their package to LAYERS", loose)


def test_base_modules_import_nothing_of_brats_seg():
    bad = [str(i) for i in _all_imports() if i.module in BASE]
    assert not bad, _report("brats_seg / brats_seg.errors must import no brats_seg module", bad)


def test_no_private_name_is_imported_from_another_module():
    bad = [str(i) for i in _all_imports() if _private(i.name or i.target.rsplit(".", 1)[-1])]
    bad += [use for m in _sources() for use in _private_attribute_uses(m)]
    assert not bad, _report("private names used across modules; make them public or move the code", bad)


def test_no_import_circles():
    edges: dict[str, set[str]] = {}
    for i in _all_imports():
        edges.setdefault(i.module, set()).add(i.target)
    lines = []
    for component in _cycles(edges):
        members = set(component)
        inside = [str(i) for i in _all_imports() if i.module in members and i.target in members]
        lines.append(" <-> ".join(component) + "\n    " + "\n    ".join(inside))
    assert not lines, _report("import circles", lines)


def test_few_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules directly in brats_seg/ (at most {MAX_TOP_LEVEL_MODULES}): {top}"


def test_monai_sliding_window_only_in_the_benchmarks():
    bad = []
    for module, (_, tree) in _sources().items():
        if module == MONAI_SLIDING_WINDOW_ONLY_IN or module.startswith(MONAI_SLIDING_WINDOW_ONLY_IN + "."):
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            names += [node.id] if isinstance(node, ast.Name) else []
            names += [node.attr] if isinstance(node, ast.Attribute) else []
            if any(n.rsplit(".", 1)[-1] == MONAI_SLIDING_WINDOW for n in names):
                bad.append(f"{module}:{node.lineno}: {MONAI_SLIDING_WINDOW}")
    assert not bad, _report(f"MONAI's {MONAI_SLIDING_WINDOW} outside {MONAI_SLIDING_WINDOW_ONLY_IN}", sorted(set(bad)))


def test_imports_run_one_way_by_layer():
    bad = []
    for i in _all_imports():
        source, target = _layer(i.module), _layer(i.target)
        if target in MAY_NOT_IMPORT.get(source, ()):
            bad.append(f"{source} -> {target}: {i}")
    assert not bad, _report("imports against the layer order", sorted(bad))


def test_the_circle_finder_sees_a_circle_and_ignores_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}}) == []
