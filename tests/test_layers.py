"""The library's layers (DESIGN §3): a module imports only its own layer or lower ones, and packages do not
import each other in a circle. Lazy imports inside functions count too.

Only `cli` may reach the ROS package (`cosmos-aloha bringup`, `estop` and `calibrate` start or talk to a ROS
graph); everything below it runs without ROS."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "cosmos_policy_core"

# Lowest first. `testing` builds fixtures from everything, like a CLI.
LAYERS = (
    ("errors", "atomic", "realtime"),
    ("nn", "layout", "diffusion"),
    ("checkpoint", "engines"),
    ("robot", "data", "sim", "calibration"),
    ("runtime", "train"),
    ("cli", "testing"),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str | None:
    """`cosmos_policy_core.runtime.policy` -> "runtime"; None outside the library or for the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "cosmos_policy_core" and len(parts) > 1 else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "cosmos_policy_core":  # `from cosmos_policy_core import x`: x is the unit
                out += [(node.lineno, f"cosmos_policy_core.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, module))
    return out


def _library_files() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_library_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _library_files()} - {None}
    missing = sorted(u for u in units if u not in LAYER_OF)
    assert not missing, f"give these modules a layer in LAYERS (and DESIGN §3): {missing}"


def test_no_module_imports_a_higher_layer_and_only_the_cli_reaches_ros():
    violations = []
    for path in _library_files():
        unit = _unit(_module_name(path))
        if unit is None:
            continue
        for line, module in _imports(path):
            if module.split(".")[0] in ("cosmos_aloha", "rclpy") and unit != "cli":
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {module} (the library never uses ROS)")
                continue
            target = _unit(module)
            if target is not None and target in LAYER_OF and LAYER_OF[target] > LAYER_OF[unit]:
                violations.append(f"{path.relative_to(ROOT)}:{line} ({unit}, layer {LAYER_OF[unit]}) imports "
                                  f"{module} ({target}, layer {LAYER_OF[target]})")
    assert not violations, "imports that go up a layer:\n" + "\n".join(violations)


def test_packages_do_not_import_each_other_in_a_circle():
    edges: dict[str, set[str]] = defaultdict(set)
    for path in _library_files():
        unit = _unit(_module_name(path))
        for _, module in _imports(path):
            target = _unit(module)
            if unit and target and target != unit:
                edges[unit].add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in list(edges) for b in edges[a] if reaches(b, a, {b})})
    assert not cycles, f"packages that import each other (directly or through others): {cycles}"


@pytest.mark.parametrize("source, expected", [
    ("from cosmos_policy_core.runtime.policy import X", "runtime"),
    ("from cosmos_policy_core import checkpoint", "checkpoint"),
    ("import cosmos_policy_core.nn.dit", "nn"),
])
def test_the_import_scanner_sees_each_form(tmp_path, source, expected):
    f = tmp_path / "m.py"
    f.write_text(f"def f():\n    {source}\n")
    (module,) = [m for _, m in _imports_outside(f)]
    assert _unit(module) == expected


def _imports_outside(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "cosmos_policy_core":
                out += [(node.lineno, f"cosmos_policy_core.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out
