"""The layer order of ``src/fasb_tl``, written down once: no module imports from a higher layer.

Every ``import`` counts: at module level, inside functions and under ``TYPE_CHECKING``, absolute
(``import fasb_tl.x``, ``from fasb_tl.x import y``, ``from fasb_tl import x``) or relative.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "fasb_tl"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest layer first. A name is a module (``models`` is fasb_tl/models.py) or a package (``data`` is everything
# under fasb_tl/data/, one unit whose modules may import each other). A unit imports only from units in lower
# layers; two units of one layer import each other only if the pair is listed in SAME_LAYER_IMPORTS. The
# facade, fasb_tl/__init__.py, sits above every layer: it may import anything, and nothing may import it.
LAYERS: list[set[str]] = [
    {"_version", "_io"},
    {"methods"},
    {"data"},
    {"models"},
    {"distributed"},
    {"attention"},
    {"activations", "probes"},
    {"intervention", "directions"},
    {"steerer_file"},
    {"steerer_folder"},
    {"steering"},
    {"fitting", "prefix"},
    {"generation_config", "teacher_forcing", "contrastive"},
    {"decoding", "sampling"},
    {"generation", "scoring", "caa", "text_baseline"},
    {"calibration", "plotting"},
    {"evaluation"},
    {"run_config", "report_figures"},
    {"bench", "demo"},
    {"cli_args", "cli_generate"},
    {"cli"},
]
# (importer, imported) pairs of one layer that are allowed; none are.
SAME_LAYER_IMPORTS: set[tuple[str, str]] = set()


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package under the package folder ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def unit_of(module: str) -> str | None:
    """The layer-table name of a dotted module: its first component below the package (None: the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, dotted module) for every import of a module of the package in ``path``."""
    root_name = module.split(".")[0]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from fasb_tl import data`` imports the module fasb_tl.data; ``from fasb_tl import x`` of a
                # name that is no module imports the package's __init__.
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else base))
    return [(line, name) for line, name in found if name == root_name or name.startswith(root_name + ".")]


def layering_violations(root: Path, layers: list[set[str]], allowed: set[tuple[str, str]]) -> list[str]:
    """Every import of ``root``'s modules that goes up (or sideways, unless allowed) in ``layers``, and every
    module or package missing from ``layers``; one line each, naming file, line and both modules."""
    modules = module_names(root)
    level = {unit: index for index, layer in enumerate(layers) for unit in layer}
    first_file = {}
    for name, path in modules.items():
        first_file.setdefault(unit_of(name), path)
    problems = [
        f"{first_file[unit].relative_to(root.parent)}: {root.name}.{unit} is in no layer; "
        "add it to LAYERS in tests/test_layers.py"
        for unit in sorted(first_file.keys() - level.keys() - {None})
    ]
    problems += [
        f"LAYERS names {unit!r}, which is no module of {root.name}"
        for unit in sorted(level - first_file.keys())
    ]
    for module, path in modules.items():
        importer = unit_of(module)
        if importer is None or importer not in level:
            continue  # the facade may import anything; an unplaced module is reported above
        for line, target in imported_modules(module, path, set(modules)):
            imported = unit_of(target)
            if imported == importer or (imported in level and level[imported] < level[importer]):
                continue
            if imported is None:
                why = "the facade, above every layer"
            elif imported not in level:
                continue
            elif level[imported] == level[importer]:
                if (importer, imported) in allowed:
                    continue
                why = f"layer {level[imported]}, the same layer, and the pair is not allowed"
            else:
                why = f"layer {level[imported]}, higher"
            problems.append(
                f"{path.relative_to(root.parent)}:{line}: {module} (layer {level[importer]}) imports {target} ({why})"
            )
    return problems


def test_no_module_imports_from_a_higher_layer():
    problems = layering_violations(SRC, LAYERS, SAME_LAYER_IMPORTS)
    assert not problems, "\n".join(problems)


def test_layers_are_disjoint():
    names = [unit for layer in LAYERS for unit in layer]
    assert len(names) == len(set(names))


@pytest.fixture
def toy_package(tmp_path):
    root = tmp_path / PACKAGE
    (root / "low").mkdir(parents=True)
    files = {
        "__init__.py": "from fasb_tl.high import h\n",
        "base.py": "X = 1\n",
        "low/__init__.py": "from fasb_tl.low.part import y\n",
        "low/part.py": "from fasb_tl.base import X\ny = X\n",
        "high.py": "from fasb_tl.low import y\n\ndef h():\n    return y\n",
        "side.py": "X = 2\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


TOY_LAYERS = [{"base"}, {"low"}, {"high", "side"}]


def test_checker_accepts_downward_imports(toy_package):
    assert layering_violations(toy_package, TOY_LAYERS, set()) == []


UP = "imports fasb_tl.high (layer 2, higher)"


@pytest.mark.parametrize(
    ("source", "line", "expected"),
    [
        ("from fasb_tl.high import h\n", 1, UP),
        ("import os\n\n\ndef f():\n    import fasb_tl.high\n", 5, UP),
        ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from fasb_tl import high\n", 4, UP),
        ("from ..high import h\n", 1, UP),
        ("from fasb_tl import X\n", 1, "imports fasb_tl (the facade, above every layer)"),
    ],
)
def test_checker_names_an_upward_import(toy_package, source, line, expected):
    (toy_package / "low" / "part.py").write_text(source)
    assert layering_violations(toy_package, TOY_LAYERS, set()) == [
        f"fasb_tl/low/part.py:{line}: fasb_tl.low.part (layer 1) {expected}"
    ]


def test_checker_refuses_a_same_layer_import_unless_allowed(toy_package):
    (toy_package / "side.py").write_text("from fasb_tl.high import h\n")
    message = "imports fasb_tl.high (layer 2, the same layer, and the pair is not allowed)"
    assert layering_violations(toy_package, TOY_LAYERS, set()) == [
        f"fasb_tl/side.py:1: fasb_tl.side (layer 2) {message}"
    ]
    assert layering_violations(toy_package, TOY_LAYERS, {("side", "high")}) == []


def test_checker_names_an_unplaced_module(toy_package):
    (toy_package / "extra.py").write_text("")
    assert layering_violations(toy_package, TOY_LAYERS, set()) == [
        "fasb_tl/extra.py: fasb_tl.extra is in no layer; add it to LAYERS in tests/test_layers.py"
    ]
