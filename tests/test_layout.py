"""The package's layering, checked on the source: each layer imports only from the layers below
it (files → codebook → model → steps → reporting → cli), click only in ``qualcode/cli``, and no
import cycles, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qualcode"

# Lowest first; a module may import from its own layer and the ones before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("qualcode.errors",)),
    ("files", ("qualcode.files",)),
    ("codebook", ("qualcode.codebook",)),
    ("model", ("qualcode.model",)),
    (
        "steps",
        (
            "qualcode.segmentation",
            "qualcode.labelling",
            "qualcode.training",
            "qualcode.classification",
            "qualcode.review",
            "qualcode.agreement",
            "qualcode.evaluation",
            "qualcode.discovery",
        ),
    ),
    ("reporting", ("qualcode.reporting",)),
    ("app", ("qualcode.demo", "qualcode.app", "qualcode.cli")),
]
ROOT = ("qualcode", "qualcode.__main__")  # the package's lazy exports and `python -m qualcode`


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (line, dotted name), at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from qualcode.model import finetune` imports the submodule
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def internal(name: str) -> str | None:
    """The qualcode module ``name`` refers to (a package's ``__init__`` counts as itself)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    return {
        module: {
            target
            for _, name in imports(path)
            if name.startswith("qualcode")
            and (target := internal(name)) is not None
            and target != module
        }
        for module, path in MODULES.items()
    }


def test_every_module_has_a_layer():
    for module in MODULES:
        if module not in ROOT:
            layer_of(module)


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ROOT])
def test_imports_only_from_lower_layers(module):
    rank = layer_of(module)
    wrong = [
        f"line {line}: {name} ({LAYERS[layer_of(internal(name))][0]})"
        for line, name in imports(MODULES[module])
        if name.startswith("qualcode")
        and internal(name) not in (None, *ROOT)
        and layer_of(internal(name)) > rank
    ]
    assert not wrong, f"{module} ({LAYERS[rank][0]}) imports from a higher layer: {wrong}"


def test_click_only_in_cli():
    users = [
        module
        for module, path in MODULES.items()
        if any(name == "click" or name.startswith("click.") for _, name in imports(path))
        and not module.startswith("qualcode.cli")
    ]
    assert not users, f"click imported outside qualcode/cli: {users}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt in ROOT:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_the_checks_can_fail(tmp_path):
    """The import finder sees imports inside functions (where lazy imports hide)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from qualcode.cli.options import guarded\n")
    assert (2, "qualcode.cli.options") in imports(source)
    assert layer_of("qualcode.cli.options") > layer_of("qualcode.files.tables")
