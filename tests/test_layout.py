"""The package's floors, as the README's Layout section draws them, against the code's own imports.

Every ``import``/``from ... import`` of a ``utils`` module counts, also the ones inside functions.
An import may go to the same floor or down, never up; there is no circle; no module imports
another module's underscored name; every module is on exactly one floor.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR_LINE = re.compile(r"^\s+(\d)\s(\S.*?)\s{2,}(.*)$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, str]]:
    """``(module, imported name or "")`` for every import of a ``utils`` module in ``path``."""
    name = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(package + ([base] if base else []))
            if base.startswith("utils"):
                found += [(base, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("utils")]
    return found


def unit(module: str) -> str:
    """The README's name of a module: ``dataset`` for utils.dataset; one ``bench`` for the package utils.bench."""
    return module.split(".")[1] if module.count(".") else module


def readme_floors(readme: str | None = None) -> dict[str, int]:
    """``{module: floor}`` from the floor lines of the README's Layout section."""
    readme = (ROOT / "README.md").read_text() if readme is None else readme
    section = readme.split("## Layout", 1)[1].split("```")[1]
    floors, current = {}, None
    for line in section.splitlines():
        match = FLOOR_LINE.match(line)
        if match:
            current, text = int(match[1]), match[3]
        elif current is not None and line.startswith(" " * 19) and line.strip():
            text = line
        else:
            current = None
            continue
        for word in re.split(r"[\s,;>]+", re.sub(r"\([^)]*\)", " ", text)):
            word = word.strip("/")
            if word:
                assert word not in floors, f"README Layout: {word} is on two floors"
                floors[word] = current
    return floors


def package_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {module_name(p): p for p in (ROOT / "utils").rglob("*.py")}
    edges, private = {}, []
    for name, path in modules.items():
        edges.setdefault(unit(name), set())
        for target, imported in imports_of(path):
            full = f"{target}.{imported}" if f"{target}.{imported}" in modules else target
            if imported.startswith("_") and not imported.startswith("__") and full != name:
                private.append(f"{name} imports {target}.{imported}")
            if full in modules and unit(full) != unit(name) and full != "utils":
                edges[unit(name)].add(unit(full))
    edges.pop("utils", None)
    return edges, private


def test_every_module_is_on_one_floor_of_the_readme():
    edges, _ = package_graph()
    floors = readme_floors()
    assert sorted(floors) == sorted(edges), "README Layout and utils/ list different modules"


def test_imports_never_run_up_a_floor_nor_in_a_circle():
    edges, _ = package_graph()
    floors = readme_floors()
    upward = [f"{a} (floor {floors[a]}) imports {b} (floor {floors[b]})"
              for a, targets in sorted(edges.items()) for b in sorted(targets) if floors[b] > floors[a]]
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)
    done, path = set(), []

    def visit(module):
        if module in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            path.append(module)
            for target in sorted(edges[module]):
                visit(target)
            path.pop()
            done.add(module)
    for module in sorted(edges):
        visit(module)


def test_no_module_imports_another_modules_private_names():
    _, private = package_graph()
    assert not private, "\n".join(private)


def test_the_check_sees_an_upward_import():
    """A README that moves config up to the entry points: every module importing it now imports upward."""
    readme = (ROOT / "README.md").read_text()
    moved = re.sub(r"(\n  0 ground\s+)config \(paths, the run's settings\), ", r"\1", readme)
    moved = moved.replace("  6 entry points   run ", "  6 entry points   config, run ")
    floors = readme_floors(moved)
    assert floors["config"] == 6 and floors["rawframes"] == 0
    edges, _ = package_graph()
    assert [a for a, targets in edges.items() if "config" in targets and floors[a] < 6]
