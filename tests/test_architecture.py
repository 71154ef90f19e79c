"""The package layout rules: components never import stages, no import cycles, MLflow in its places."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lora_study"
STAGES = PACKAGE / "stages"
CLI = PACKAGE / "cli.py"
MLFLOW_CALLERS = {PACKAGE / "tracking.py", PACKAGE / "registry.py", PACKAGE / "adapters.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def import_nodes(tree: ast.Module):
    """Every import statement, at the top or inside functions, except inside a module-level
    `__getattr__` (PEP 562): a name resolved on first use for older callers, not a dependency."""
    for top in tree.body:
        if isinstance(top, ast.FunctionDef) and top.name == "__getattr__":
            continue
        yield from (node for node in ast.walk(top) if isinstance(node, (ast.Import, ast.ImportFrom)))


def imported_modules(name: str) -> set[str]:
    """The lora_study modules `name` imports, at the top or inside functions."""
    path = SOURCES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..stages import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in SOURCES:  # `import lora_study.x.y` names a module or a package
                candidate = candidate.rpartition(".")[0]
            if candidate:
                found.add(candidate)
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it (the first repeated at the end), or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_no_component_imports_a_stage():
    offenders = {
        name: sorted(target for target in imported_modules(name) if target.startswith("lora_study.stages"))
        for name, path in SOURCES.items()
        if STAGES not in path.parents and path != CLI
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_import_graph_of_lora_study_has_no_cycle():
    graph = {name: imported_modules(name) for name in SOURCES}
    assert graph["lora_study.stages.train"] >= {"lora_study.config", "lora_study.training"}  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_stages_tracking_registry_and_adapters_call_mlflow():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in SOURCES.values()
        if STAGES not in path.parents and path not in MLFLOW_CALLERS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "mlflow." in line
    ]
    assert offenders == []


def test_every_stage_is_the_command_of_its_name():
    from lora_study.cli import COMMANDS

    stages = sorted(path.stem for path in STAGES.glob("*.py") if path.stem != "__init__")
    for stage in stages:
        tree = ast.parse((STAGES / f"{stage}.py").read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert f"run_{stage}" in functions, f"lora_study/stages/{stage}.py defines no run_{stage}"
        assert getattr(COMMANDS.get(stage), "stage", None) == stage, f"command {stage}"
    assert sorted(COMMANDS) == stages


def test_no_utils_or_helpers_modules():
    assert [path for path in PACKAGE.rglob("*.py") if path.name in ("utils.py", "helpers.py")] == []
